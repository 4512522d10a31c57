"""Run-directory policy: never silently replace a finished run, resume only the config that was saved.

``check_run_dir(run_dir, config, resume=..., overwrite=..., allow_changed=...)`` is called before training
(by ``Trainer.fit`` and, earlier, by ``detkd.experiment.train``); it raises ``UserError`` when

* the directory cannot be written (``train.out_dir`` named);
* it already holds a run (``holds_run``: a checkpoint, summary or logged metrics) and neither ``resume`` nor ``overwrite`` is set;
* ``resume`` is set and the config differs from the run's saved ``config.json`` in a key that
  ``allow_changed`` does not list (an entry ``"optim"`` allows every ``optim.*`` key).

``clear_run_dir`` removes the files of a previous run (``--overwrite``); other files are left alone.
Configs are compared as flattened ``key -> value`` maps of their JSON form (``flatten_config``); the keys in
``IGNORED_KEYS`` (how the run is started, not what it trains) never count as changes.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from detkd.errors import UserError

__all__ = ["RUN_FILES", "IGNORED_KEYS", "flatten_config", "config_changes", "holds_run", "check_run_dir",
           "clear_run_dir"]

RUN_FILES = ("last.pt", "final.pt", "metrics.jsonl", "summary.json", "config.json")
RUN_DIRS = ("tb",)
# How this session runs, not what it trains: a resume may change these freely.
IGNORED_KEYS = frozenset({
    "train.resume", "train.overwrite", "train.allow_changed", "train.progress", "train.tensorboard",
    "train.max_iters", "train.ckpt_every", "train.ckpt_every_iters", "train.log_every", "train.num_workers",
    "train.device", "train.out_dir",  # the run dir may have been moved
})


def flatten_config(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}`` after a JSON round trip (tuples become lists)."""
    cfg = json.loads(json.dumps(cfg, default=str))
    out: dict[str, Any] = {}

    def walk(d: dict, pre: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(v, f"{pre}{k}.")
            else:
                out[f"{pre}{k}"] = v

    walk(cfg, prefix)
    return out


def config_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """``key -> (saved value, current value)`` for the keys present in both configs whose values differ."""
    a, b = flatten_config(saved), flatten_config(current)
    return {k: (a[k], b[k]) for k in sorted(a.keys() & b.keys()) if a[k] != b[k] and k not in IGNORED_KEYS}


def _allowed(key: str, allow: list[str] | tuple[str, ...]) -> bool:
    return any(key == a or key.startswith(a.rstrip(".") + ".") for a in allow)


def _run_files(run_dir: Path) -> list[str]:
    return [n for n in RUN_FILES if (run_dir / n).is_file()] + [n + "/" for n in RUN_DIRS if (run_dir / n).is_dir()]


def holds_run(run_dir: str | Path) -> list[str]:
    """The files of a previous run worth keeping in ``run_dir``: a checkpoint, a summary or logged metrics.
    Empty when there is none (a ``config.json`` / ``tb/`` left by a run that failed before its first logged
    step does not count)."""
    d = Path(run_dir)
    found = [n for n in ("last.pt", "final.pt", "summary.json") if (d / n).is_file()]
    metrics = d / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append("metrics.jsonl")
    return found


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".detkd_write_test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to the run directory {run_dir} ({e.strerror or e}); choose a writable "
                        "train.out_dir", key="train.out_dir", path=run_dir) from None


def check_run_dir(run_dir: str | Path, config: dict, *, resume: bool, overwrite: bool = False,
                  allow_changed: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Apply the policy above; returns the keys whose change ``allow_changed`` accepted (for a warning)."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other (train.resume / train.overwrite)",
                        key="train.overwrite")
    _check_writable(run_dir)
    found = holds_run(run_dir)
    if not resume:
        if found and not overwrite:
            raise UserError(
                f"{run_dir} already holds a run ({', '.join(found)}); pass --resume to continue it, --overwrite "
                "to replace it, or choose another name / train.out_dir", path=run_dir)
        return []
    saved_path = run_dir / "config.json"
    if not saved_path.is_file():
        return []
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{saved_path}: unreadable saved config ({e}); cannot check the resumed config",
                        path=saved_path) from None
    changes = config_changes(saved, config)
    refused = {k: v for k, v in changes.items() if not _allowed(k, allow_changed)}
    if refused:
        diff = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise UserError(
            f"--resume: the config differs from the run's saved {saved_path}: {diff}; resume with the saved "
            f"values, or accept the change with {' '.join('--allow-changed ' + k for k in refused)}", path=saved_path,
            key=next(iter(refused)))
    return sorted(changes)


def clear_run_dir(run_dir: str | Path) -> list[str]:
    """Delete the files of a previous run (``RUN_FILES`` and ``RUN_DIRS``); returns what was removed."""
    run_dir = Path(run_dir)
    removed = _run_files(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
    return removed
