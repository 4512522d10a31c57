"""detkd model files: the one card format and its one reader; foreign checkpoints in (EVAL.md §4.4-4.5).

* A **detkd model file** is ``<name>.safetensors`` (the state dict, no pickles) plus ``<name>.json``, the model
  card (``card_path``)::

      format       "detkd-model/2"
      model        {"name": <registered model builder>, ...its keyword arguments}  (the model config dict)
      task         "detection" | "facerec" | null
      weights      file name of the .safetensors
      num_tensors  entries of the state dict
      num_params   elements of its floating-point tensors
      source       provenance: {"experiment", "checkpoint", "epoch", "global_step"} for an export of a run,
                   {"path", "md5"} for an imported foreign checkpoint, or {}

  plus any informative keys a caller adds. The model is rebuilt from ``model`` through the registry only: no
  Python import path is stored, so moving a config class never breaks a file. ``load_model_file`` is the one
  reader; ``upgrade_card`` also reads the two older formats (``detkd-model/1`` with ``config``, and
  ``detkd.student/1`` with ``model`` and a ``model_config_type`` import path, which is ignored) and bare
  ``{"model": {...}}`` cards.
* Foreign ``.pth`` files are read with ``torch.load(weights_only=True)``; a ``state_dict`` / ``model`` wrapper
  and DataParallel ``module.`` prefixes are stripped. Key/shape checks are strict and their errors list the
  offending keys.
* The ImageNet MobileNetV1 ``.tar`` pickles optimizer state and needs ``weights_only=False``, i.e. arbitrary
  code execution on load: it is refused unless the caller passes ``trust=True``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detkd.registry import lookup

CARD_FORMAT = "detkd-model/2"
OLD_CARD_FORMATS = ("detkd-model/1", "detkd.student/1")


def md5sum(path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def strip_prefix(sd: dict, prefix: str = "module.") -> dict:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}


def _unwrap(obj, path) -> dict[str, Tensor]:
    """The tensor dict inside a loaded checkpoint (plain, ``{"state_dict": ...}``, ``{"model": ...}``)."""
    for key in ("state_dict", "model", "student"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors (top-level keys: {list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__})")
    return strip_prefix(dict(obj))


def load_state_file(path) -> dict[str, Tensor]:
    """A state dict from ``.safetensors``, or from a torch file read with ``weights_only=True`` (prefixes stripped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return strip_prefix(load_file(str(path)))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    from detkd.engine.checkpoint import holds_python_objects, load_error_detail
    from detkd.errors import UserError

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if holds_python_objects(e):  # unpickling them could run code
            raise UserError(f"{path}: refusing to unpickle it (it holds Python objects, not only tensors; loading "
                            "it could run arbitrary code); re-save its state_dict with torch.save or as .safetensors",
                            path=path) from None
        raise UserError(f"{path}: not a torch checkpoint ({load_error_detail(e)})", path=path) from None
    except Exception as e:  # torch's readers raise many types on a file of another format
        raise UserError(f"{path}: not a torch checkpoint ({load_error_detail(e)})", path=path) from None
    return _unwrap(obj, path)


def check_state(model: nn.Module, sd: dict[str, Tensor], source, allow_missing: tuple[str, ...] = ()) -> None:
    """Raise ``ValueError`` naming missing / unexpected keys and shape mismatches of ``sd`` against ``model``.

    ``allow_missing``: key prefixes that may be absent from ``sd`` (e.g. ``"head."``, a recognizer's training
    head that an embedding-only export drops)."""
    want = model.state_dict()
    missing = [k for k in want if k not in sd and not k.startswith(tuple(allow_missing))]
    unexpected = [k for k in sd if k not in want]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(want[k].shape)}"
              for k in want if k in sd and sd[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" ... (+{len(items) - 4} more)" if len(items) > 4 else ""
                parts.append(f"{label} ({len(items)}): {', '.join(items[:4])}{more}")
        raise ValueError(f"{source}: does not fit {type(model).__name__}: " + "; ".join(parts))


# ------------------------------------------------------------------------------------------ model cards


def card_path(weights) -> Path:
    """The card of a model file: ``student.safetensors`` -> ``student.json``."""
    return Path(weights).with_suffix(".json")


def make_card(model_config: dict, state_dict: dict[str, Tensor], *, task: str | None = None,
              source: dict | None = None, weights: str | None = None, **extra) -> dict:
    """A ``detkd-model/2`` card for ``state_dict`` of the model built from ``model_config`` (a dict with
    ``name``); ``extra`` keys are informative."""
    if not isinstance(model_config, dict) or "name" not in model_config:
        raise ValueError(f"model card: the model config must be a dict with a 'name' key, got {model_config!r}")
    return {
        "format": CARD_FORMAT,
        "model": dict(model_config),
        "task": task,
        "weights": weights,
        "num_tensors": len(state_dict),
        "num_params": int(sum(v.numel() for v in state_dict.values() if v.is_floating_point())),
        "source": dict(source or {}),
        **extra,
    }


def upgrade_card(card: Any, where="card") -> dict:
    """Any detkd card (current, ``detkd-model/1``, ``detkd.student/1`` or a bare ``{"model": {...}}``) as a
    ``detkd-model/2`` dict. Counts unknown to an old card are ``None``; ``model_config_type`` is dropped."""
    if not isinstance(card, dict):
        raise ValueError(f"{where}: a model card must be a JSON object, got {type(card).__name__}")
    fmt = card.get("format")
    if fmt == CARD_FORMAT:
        out = dict(card)
    elif fmt == "detkd-model/1":
        out = {k: v for k, v in card.items() if k not in ("config", "architecture", "tensors", "params", "format")}
        out.update(model=card.get("config"), num_tensors=card.get("tensors"), num_params=card.get("params"),
                   source=card.get("source") or {})
    elif fmt in ("detkd.student/1", None):
        keep = ("experiment", "source_checkpoint", "epoch", "global_step")
        out = {k: v for k, v in card.items() if k not in (*keep, "model_config_type", "format")}
        out["source"] = {k.removeprefix("source_"): card[k] for k in keep if card.get(k) is not None}
    else:
        raise ValueError(f"{where}: unknown model card format {fmt!r} (known: {CARD_FORMAT}, "
                         f"{', '.join(OLD_CARD_FORMATS)})")
    model = out.get("model")
    if not isinstance(model, dict) or "name" not in model:
        raise ValueError(f"{where}: model card has no model config with a 'name' (keys: {sorted(card)})")
    out.pop("format", None)
    head = {"format": CARD_FORMAT, "model": model, **{k: out.pop(k, None) for k in ("task", "weights")}}
    tail = {k: out.pop(k, None) for k in ("num_tensors", "num_params")}
    return {**head, **tail, "source": out.pop("source", None) or {}, **out}


def read_card(path) -> dict:
    """The card beside model file ``path`` (or the card file itself), upgraded to the current format."""
    path = Path(path)
    cp = path if path.suffix == ".json" else card_path(path)
    if not cp.is_file():
        raise FileNotFoundError(f"model card not found: {cp} (expected beside {path.name})")
    try:
        card = json.loads(cp.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cp}: invalid JSON ({e})") from e
    return upgrade_card(card, cp)


def write_card(weights, card: dict) -> Path:
    """Write ``card`` beside ``weights`` (atomically); returns the card path."""
    from detkd.engine.checkpoint import write_json_atomic

    return write_json_atomic(card_path(weights), card)


def build_from_card(card: dict, where="card") -> nn.Module:
    """The model a card describes, built through the model registry (weights not loaded)."""
    cfg = dict(upgrade_card(card, where)["model"])
    name = cfg.pop("name")
    try:
        return lookup("model", name)(**cfg)
    except TypeError as e:
        raise ValueError(f"{where}: config does not fit builder {name!r}: {e}") from e


def load_model_file(path, allow_missing: tuple[str, ...] = ()) -> tuple[nn.Module, dict]:
    """Build the model described by ``<path>.json`` and load ``path`` into it strictly (except key prefixes in
    ``allow_missing``); returns ``(model in eval mode, card upgraded to the current format)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    card = read_card(path)
    model = build_from_card(card, card_path(path))
    sd = load_state_file(path)
    check_state(model, sd, path, allow_missing)
    model.load_state_dict(sd, strict=not allow_missing)
    model.eval()
    return model, card


def save_model_file(model: nn.Module, out, source: dict | None = None, task: str | None = None) -> dict:
    """Write ``out`` (.safetensors) + its card for a model that has a ``config`` dataclass; returns the card."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out), metadata={"format": "pt"})
    card = make_card(dataclasses.asdict(model.config), sd, task=task, source=source, weights=out.name)
    write_card(out, card)
    return read_card(out)  # as stored (JSON lists for tuples)


def load_teacher(model_cfg: Any, weights) -> nn.Module:
    """The one teacher loader: build ``model_cfg`` (a model config dataclass with ``name``), load ``weights``
    (an export, a detkd checkpoint or run dir, or a plain state dict) strictly; frozen and in eval mode."""
    from detkd.engine.checkpoint import load_weights_into
    from detkd.errors import UserError
    from detkd.registry import build_model

    if model_cfg is None or not weights:
        raise UserError("a teacher needs its model config (distill.teacher) and its weights "
                        "(distill.teacher_weights)", key="distill.teacher_weights")
    teacher = build_model(model_cfg)
    # errors name distill.teacher_weights and say what the file holds vs the teacher config
    load_weights_into(teacher, weights, "distill.teacher_weights", expected=getattr(model_cfg, "name", None))
    return teacher.eval().requires_grad_(False)


def import_retinaface_biubug6(src, activation: str, out, width: float = 0.25, anchors=None,
                              task_convs: bool | None = None) -> dict:
    """Convert a biubug6 / TDKD / Face-Detector-1MB RetinaFace-MobileNet ``.pth`` into a detkd model file.

    ``activation`` must be stated ("leaky0.1" for biubug6 HEAD, "relu" for TDKD and the first release): the keys
    cannot tell. ``anchors`` = min sizes per level (default [[16,32],[64,128],[256,512]]). ``task_convs=None``
    detects TDKD teacher task blocks from the keys. Returns the model card (also written beside ``out``).
    """
    from detkd.models.retinaface import retinaface_mnet

    src, out = Path(src), Path(out)
    sd = load_state_file(src)
    if task_convs is None:
        task_convs = any(".conv_dw_3x3." in k for k in sd)
    model = retinaface_mnet(width=width, activation=activation, task_convs=task_convs, min_sizes=anchors)
    check_state(model, sd, src)
    model.load_state_dict(sd, strict=True)
    return save_model_file(model, out, source={"path": str(src.resolve()), "md5": md5sum(src)}, task="detection")


def load_resnet_trunk(model: nn.Module, path) -> list[str]:
    """Load a torchvision-layout ResNet state dict (``conv1``, ``bn1``, ``layer1..4``; ``fc.*`` ignored) into a
    one-stage detector's ``backbone.body`` strictly: an ImageNet ResNet or a ``detkd pretrain-trunk`` file."""
    body = getattr(getattr(model, "backbone", None), "body", None)
    if body is None:
        raise ValueError(f"{path}: {type(model).__name__} has no ResNet trunk (backbone.body) to initialise")
    sd = {k: v for k, v in load_state_file(path).items() if not k.startswith("fc.")}
    if "conv1.weight" not in sd or not any(k.startswith("layer1.") for k in sd):
        raise ValueError(f"{path}: not a torchvision ResNet state dict (conv1/layer1..4); first keys: {list(sd)[:5]}")
    check_state(body, sd, path)
    body.load_state_dict(sd, strict=True)
    return sorted(sd)


def load_backbone_imagenet(model: nn.Module, tar_path, trust: bool = False) -> None:
    """Load the ImageNet MobileNetV1 ``.tar`` (``module.stage*`` + ``module.fc.*``) into ``model.body``."""
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        raise FileNotFoundError(f"ImageNet backbone file not found: {tar_path}")
    if not trust:
        raise PermissionError(
            f"{tar_path}: refusing to unpickle: this legacy checkpoint stores optimizer state and can only be "
            "read with torch.load(weights_only=False), which executes arbitrary code from the file. "
            "Pass trust=True (config: train.trust_pickle=true) only if you trust where the file comes from."
        )
    obj = torch.load(tar_path, map_location="cpu", weights_only=False)
    sd = {k: v for k, v in _unwrap(obj, tar_path).items() if not k.startswith("fc.")}
    check_state(model.body, sd, tar_path)
    model.body.load_state_dict(sd, strict=True)
