"""Atomic training checkpoints, exact-resume state, and the student export (safetensors + JSON model card).

Training state (``last.pt`` / ``final.pt`` in the run dir, written with ``torch.save``)::

    format          "detkd.train/1"
    task            task.state_dict(): student ("student.*") + adapters; never teacher keys
    optimizer       optimizer.state_dict()          (absent in final.pt)
    scheduler       scheduler.state_dict()          (absent in final.pt)
    scaler          GradScaler.state_dict() or {}   (absent in final.pt)
    epoch           epoch in progress (0-based); == epochs when training finished
    step_in_epoch   batches of ``epoch`` already trained (0 at an epoch boundary)
    global_step     iterations trained so far
    nonfinite       {"consecutive": int, "total": int} skipped non-finite steps
    rng             list (one per rank) of rng_state() dicts
    world_size      ranks of the run that wrote it
    config          dataclasses.asdict(ExperimentConfig)
    model_config_type  "module:QualName" of cfg.model's dataclass (informative; never read back)

No checkpoint or export is ever written with a non-finite (NaN / inf) floating tensor: ``save_checkpoint``
and ``export_student`` raise ``detkd.errors.TrainingDiverged`` instead (``nonfinite_tensors`` lists them).

Every value is a tensor, number, string, list or dict, so our own files load with ``weights_only=True``;
RNG states are stored as lists/tensors for that reason. The export is ``<out>.safetensors`` holding the
student's ``state_dict`` (keys without the ``student.`` prefix) and ``<out>.json`` (``card_path(out)``): the
model card of ``detkd.models.weights`` (model config dict, provenance, any fields the caller adds), read back
by ``detkd.models.weights.load_model_file``.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import re
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from detkd.errors import TrainingDiverged, UserError

__all__ = [
    "nonfinite_tensors",
    "FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "rng_state",
    "set_rng_state",
    "check_no_teacher",
    "find_resume",
    "resolve_checkpoint",
    "student_state_dict",
    "export_student",
    "load_student_weights",
    "write_json_atomic",
    "model_kind",
    "describe_model",
    "describe_weights",
    "weights_model_name",
    "load_weights_into",
    "expect_model_kind",
]

FORMAT = "detkd.train/1"
TEACHER_SEGMENTS = frozenset({"teacher", "_teacher", "teacher_model", "teachers"})


# --------------------------------------------------------------------------------------- atomic files


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write) -> Path:
    """Call ``write(fileobj)`` on a temp file in the same directory, fsync it, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def nonfinite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating tensors nested in ``obj`` (dicts / lists / tuples) holding NaN or inf."""
    if isinstance(obj, Tensor):
        return [prefix or "<tensor>"] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple)):
        items = enumerate(obj)
    else:
        return []
    out = []
    for k, v in items:
        out += nonfinite_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def save_checkpoint(path: str | Path, state: dict, check_finite: bool = True) -> Path:
    """``torch.save(state)`` to ``path`` atomically: a reader sees the old file or the new one, never a part.

    Refuses (``TrainingDiverged``, nothing written, the old file kept) when a floating tensor in ``state`` is
    non-finite, unless ``check_finite=False``."""
    path = Path(path)
    if check_finite:
        bad = nonfinite_tensors(state)
        if bad:
            raise TrainingDiverged(
                f"refusing to write {path}: {len(bad)} tensors hold NaN/inf (e.g. {bad[0]}); the previous file is "
                "kept", path=path)
    return _atomic_write(path, lambda f: torch.save(state, f))


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    data = (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()
    return _atomic_write(Path(path), lambda f: f.write(data))


def load_checkpoint(path: str | Path, map_location: Any = "cpu", trusted: bool = False) -> dict:
    """Load a checkpoint with ``weights_only=True``; ``trusted=True`` allows full unpickling as a fallback
    (only for files you trust). Errors name the file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a directory, expected a file", path=path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not holds_python_objects(e):  # not a pickle of tensors at all (a text file, another format)
            raise UserError(f"{path}: not a torch checkpoint ({load_error_detail(e)})", path=path) from None
        if not trusted:
            found = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the first non-tensor class it met
            what = f", e.g. {found.group(1)}" if found else ""
            raise UserError(
                f"{path}: refusing to unpickle it (it holds Python objects, not only tensors{what}); loading it "
                "could run arbitrary code. Re-save it as a plain state_dict or .safetensors, or convert a foreign "
                "checkpoint with `detkd import-weights`", path=path
            ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {e})", path=path) from None
    except (KeyError, ValueError, TypeError) as e:  # torch's legacy reader on a file of another format
        raise UserError(f"{path}: not a torch checkpoint ({load_error_detail(e)})", path=path) from None
    return torch.load(path, map_location=map_location, weights_only=False)


def holds_python_objects(e: pickle.UnpicklingError) -> bool:
    """Whether ``torch.load(weights_only=True)`` refused a pickle because it holds Python objects (torch names
    the class: ``GLOBAL types.SimpleNamespace``), rather than because the file is no pickle of tensors at all."""
    return "GLOBAL" in str(e)


def load_error_detail(e: Exception) -> str:
    """The informative part of a ``torch.load`` failure, on one line (``UnpicklingError: Unsupported operand
    110``), without torch's paragraphs of advice about ``weights_only``."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


# -------------------------------------------------------------------------------------------- RNG state


def rng_state() -> dict:
    """All RNG states of this process as tensors/lists (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


# ---------------------------------------------------------------------------------------- task weights


def check_no_teacher(state_dict: dict[str, Tensor], where: str = "task state_dict") -> None:
    """Raise if any key belongs to a teacher (a dotted segment named ``teacher``/``_teacher``/...)."""
    bad = [k for k in state_dict if TEACHER_SEGMENTS.intersection(k.split("."))]
    if bad:
        raise ValueError(
            f"{where} holds teacher weights ({len(bad)} keys, e.g. {bad[0]!r}); keep the teacher outside the "
            "task's registered children (e.g. `object.__setattr__(task, 'teacher', t)` or a plain list)"
        )


def find_resume(run_dir: str | Path) -> Path | None:
    """``run_dir/last.pt`` if it exists (temp files of an interrupted save are ignored)."""
    p = Path(run_dir) / "last.pt"
    return p if p.is_file() else None


def resolve_checkpoint(src: str | Path) -> Path:
    """A checkpoint file, or a run dir (its ``final.pt``, else ``last.pt``)."""
    src = Path(src)
    if src.is_dir():
        for name in ("final.pt", "last.pt"):
            if (src / name).is_file():
                return src / name
        raise FileNotFoundError(f"run dir {src} holds neither final.pt nor last.pt")
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint {src} does not exist")
    return src


def student_state_dict(task_state: dict[str, Tensor], where: str = "checkpoint") -> dict[str, Tensor]:
    """The ``student.*`` entries of a task state_dict, prefix removed."""
    out = {k[len("student.") :]: v for k, v in task_state.items() if k.startswith("student.")}
    if not out:
        raise KeyError(f"{where}: no 'student.*' keys in the task state (does the task define `self.student`?)")
    return out


def export_student(src: str | Path, out_path: str | Path, model_card: dict | None = None, half: bool = False) -> Path:
    """Write the student of a run dir / training checkpoint as safetensors plus a JSON model card; ``half`` stores
    floating-point tensors as float16 (half the file; loading upcasts into the float32 model, so outputs move by
    float16 rounding: evaluate the half file itself before quoting its numbers)."""
    from safetensors.torch import save_file

    ckpt = resolve_checkpoint(src)
    state = load_checkpoint(ckpt)
    if not isinstance(state, dict) or state.get("format") != FORMAT or "task" not in state:
        raise ValueError(f"{ckpt}: not a detkd training checkpoint (format {FORMAT!r} with a 'task' entry)")
    check_no_teacher(state["task"], str(ckpt))
    student = student_state_dict(state["task"], str(ckpt))
    bad = nonfinite_tensors(student)
    if bad:
        raise TrainingDiverged(
            f"{ckpt}: refusing to export: {len(bad)} student tensors hold NaN/inf (e.g. {bad[0]}); the run "
            "diverged, retrain it with a lower learning rate", path=ckpt)
    student = {k: v.detach().cpu().contiguous().clone() for k, v in student.items()}  # no shared storage
    if half:
        student = {k: v.half() if v.is_floating_point() else v for k, v in student.items()}
    out = Path(out_path)
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp.{os.getpid()}"
    try:
        save_file(student, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    from detkd.models.weights import make_card, write_card

    cfg = state.get("config") or {}
    source = {"experiment": cfg.get("name"), "checkpoint": str(ckpt), "epoch": state.get("epoch"),
              "global_step": state.get("global_step")}
    extra = dict(model_card or {}) | ({"dtype": "float16"} if half else {})
    if "class_names" not in extra:  # detectors trained on a known data set carry its class names
        from detkd.data.names import dataset_class_names

        names = dataset_class_names(cfg.get("data") if isinstance(cfg.get("data"), dict) else None)
        if names is not None:
            extra["class_names"] = list(names)
    card = make_card(cfg.get("model"), student, task=cfg.get("task"), source=source, weights=out.name, **extra)
    write_card(out, card)
    return out


def load_student_weights(path: str | Path) -> dict[str, Tensor]:
    """Student weights from an export (``.safetensors``), a detkd training checkpoint or run dir, or a plain
    state_dict saved with ``torch.save``. Foreign checkpoints go through ``detkd.models.weights``."""
    from detkd.models.weights import load_state_file

    p = Path(path)
    if p.suffix == ".safetensors":
        return load_state_file(p)
    ckpt = resolve_checkpoint(p)
    state = load_checkpoint(ckpt)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        return student_state_dict(state["task"], str(ckpt))
    if isinstance(state, dict) and state and all(isinstance(v, Tensor) for v in state.values()):
        return state
    raise ValueError(f"{ckpt}: neither a detkd checkpoint nor a plain state_dict of tensors")


# ------------------------------------------------------------------------------- what a weights file holds


def model_kind(name: str) -> str:
    """``"face detector"``, ``"face recognizer"``, ``"detector"`` or ``"model"`` for a registered model name,
    from the return annotation of its builder (so file moves and renames do not matter)."""
    from detkd.registry import MODELS, load_all

    load_all()
    fn = MODELS.get(name)
    try:  # the returned class and its bases, e.g. ["RetinaFace", "DenseDetector", "Module", "object"]
        ret = typing.get_type_hints(fn).get("return")
        names = [c.__name__ for c in ret.__mro__] if isinstance(ret, type) else [str(ret)]
    except Exception:  # unresolvable annotation: its text
        names = [str(getattr(fn, "__annotations__", {}).get("return", ""))]
    text = " ".join(names)
    if "RetinaFace" in text:
        return "face detector"
    if "Recognizer" in text:
        return "face recognizer"
    if "Detector" in text or "RCNN" in text:
        return "detector"
    return "model"


def describe_model(name: str) -> str:
    """``"a face recognizer (mobilefacenet)"``."""
    return f"a {model_kind(name)} ({name})"


def weights_model_name(path: str | Path) -> str | None:
    """The model name recorded with a weights file (model card, or a training checkpoint's config), or None."""
    p = Path(path)
    try:
        if p.suffix == ".safetensors" or p.suffix == ".json":
            for card in (p.with_suffix(".json"), p.with_name(p.name + ".json")):
                if card.is_file():
                    c = json.loads(card.read_text())
                    model = c.get("model") if isinstance(c.get("model"), dict) else c.get("config")
                    if isinstance(model, dict) and model.get("name"):
                        return str(model["name"])
                    if c.get("architecture"):
                        return str(c["architecture"])
            return None
        state = load_checkpoint(resolve_checkpoint(p))
        model = (state.get("config") or {}).get("model") if isinstance(state, dict) else None
        return str(model["name"]) if isinstance(model, dict) and model.get("name") else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def describe_weights(path: str | Path) -> str:
    name = weights_model_name(path)
    return describe_model(name) if name else "a model of unrecorded type"


def _mismatch(want: dict[str, Tensor], got: dict[str, Tensor]) -> str:
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [k for k in want if k in got and tuple(got[k].shape) != tuple(want[k].shape)]
    parts = [f"{len(v)} {label} (e.g. {v[0]!r})" for label, v in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if v]
    return ", ".join(parts) or "no key differences"


def load_weights_into(model: torch.nn.Module, path: str | Path, key: str, expected: str | None = None) -> None:
    """Load student-style weights (see ``load_student_weights``) from ``path`` into ``model`` strictly.

    Every failure is a one-line ``UserError`` naming the config ``key`` the path came from; a mismatch says
    what the file holds and what was expected (``expected``: the model name, e.g. ``cfg.model.name``)."""
    p = Path(path)
    if not str(path):
        raise UserError(f"{key} is empty", key=key)
    if not p.exists():
        raise UserError(f"{key}={str(path)!r}: no such file or directory", key=key, path=p)
    try:
        sd = load_student_weights(p)
    except (OSError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise UserError(f"{key}: {msg}", key=key, path=p) from None
    want = model.state_dict()
    if set(sd) != set(want) or any(tuple(sd[k].shape) != tuple(want[k].shape) for k in want):
        holds = describe_weights(p)
        exp = describe_model(expected) if expected else f"a {type(model).__name__}"
        raise UserError(f"{key}={str(path)!r} is {holds}, expected {exp}: its weights do not fit "
                        f"({_mismatch(want, sd)})", key=key, path=p)
    model.load_state_dict(sd, strict=True)


def expect_model_kind(path: str | Path, kinds: tuple[str, ...], flag: str) -> None:
    """Raise a ``UserError`` naming ``flag`` when the weights at ``path`` are recorded as a model of a kind not in
    ``kinds`` (e.g. a face recognizer given to a detector evaluation). Unrecorded types pass."""
    name = weights_model_name(path)
    if name is None:
        return
    kind = model_kind(name)
    if kind != "model" and kind not in kinds:
        raise UserError(f"{flag} {path} is {describe_model(name)}, expected a {' or a '.join(kinds)}", path=path)
