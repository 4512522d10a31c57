"""Run logging: a JSON-lines metrics file, TensorBoard scalars and a tqdm progress bar (main rank only).

``run_dir/metrics.jsonl`` holds one JSON object per line:

* training rows: ``{"kind": "train", "step", "epoch", "lr", "loss", <each loss key>, "time"}`` where ``step``
  is the global iteration count after the step (1-based), ``loss`` the summed objective averaged over ranks,
  ``time`` seconds since the logger was opened;
* evaluation rows: ``{"kind": "eval", "step", "epoch", <metric>: value, "time"}``.

On resume ``truncate_after(step)`` drops rows written after the checkpoint, so the file of a resumed run
equals that of an uninterrupted one (up to ``time``); the TensorBoard writer (opened lazily) then starts with
``purge_step=step + 1``, so TensorBoard drops the events of the old run after the checkpoint and shows each
step once. Non-main ranks get a disabled logger: all calls no-op.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from tqdm.auto import tqdm

__all__ = ["MetricsLogger", "progress", "read_jsonl", "read_metrics"]


def _scalar(v: Any) -> Any:
    if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep the row readable
    return v


class MetricsLogger:
    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self._t0 = time.time()
        self._tb = None
        self._file = None
        self._want_tb = enabled and tensorboard
        self._purge_step: int | None = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def tb(self):
        """The ``SummaryWriter`` (created on first use, with the purge step of a resume), or ``None``."""
        if self._tb is None and self._want_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=self._purge_step)
            except ImportError as e:  # tensorboard missing: JSON lines still work
                print(f"[detkd] TensorBoard disabled ({e})", file=sys.stderr)
                self._want_tb = False
        return self._tb

    def truncate_after(self, step: int) -> None:
        """Drop rows whose ``step`` exceeds ``step`` (they were written after the resumed checkpoint)."""
        if not self.enabled:
            return
        if step > 0:
            if self._tb is not None:  # reopen so that the purge marker is written
                self._tb.close()
                self._tb = None
            self._purge_step = step + 1
        if not self.path.is_file():
            return
        self.close_file()
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if row.get("step", 0) <= step:
                keep.append(line)
        self.path.write_text("".join(k + "\n" for k in keep))

    def _write(self, row: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def log_train(self, step: int, epoch: int, lr: float, losses: dict[str, float]) -> None:
        if not self.enabled:
            return
        loss = sum(losses.values())
        row = {"kind": "train", "step": step, "epoch": epoch, "lr": lr, "loss": loss}
        row.update({k: _scalar(v) for k, v in losses.items()})
        row["time"] = round(time.time() - self._t0, 3)
        self._write({k: _scalar(v) for k, v in row.items()})
        tb = self.tb
        if tb is not None:
            tb.add_scalar("train/loss", loss, step)
            tb.add_scalar("train/lr", lr, step)
            for k, v in losses.items():
                tb.add_scalar(f"train/{k}", v, step)

    def log_eval(self, step: int, epoch: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        flat = {k: _scalar(v) for k, v in metrics.items() if isinstance(_scalar(v), (int, float, str, bool))}
        self._write({"kind": "eval", "step": step, "epoch": epoch, **flat, "time": round(time.time() - self._t0, 3)})
        tb = self.tb
        if tb is not None:
            for k, v in flat.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    tb.add_scalar(f"eval/{k}", v, step)

    def close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        self.close_file()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


def progress(iterable: Iterable, total: int | None = None, enabled: bool = True, desc: str = "", initial: int = 0):
    """A tqdm bar over ``iterable`` (disabled on non-main ranks); set ``bar.set_postfix(loss=...)``."""
    return tqdm(iterable, total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def read_jsonl(path: str | Path) -> list[dict]:
    """The objects of a JSON-lines file, one per non-empty line; errors name ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not a JSON object ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def read_metrics(run_dir: str | Path, kind: str | None = "train") -> list[dict]:
    """Rows of ``run_dir/metrics.jsonl`` (or of that file itself) of one ``kind``, or all with ``kind=None``."""
    path = Path(run_dir)
    rows = read_jsonl(path if path.suffix == ".jsonl" else path / "metrics.jsonl")
    return [r for r in rows if kind is None or r.get("kind") == kind]
