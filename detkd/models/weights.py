"""Foreign checkpoints in, detkd model files out (EVAL.md §4.4-4.5, METHODS.md §1.2).

* A **detkd model file** is ``<name>.safetensors`` (the state dict, no pickles) plus ``<name>.json``, the model
  card: ``{"format": "detkd-model/1", "architecture": <builder>, "config": {"name": <builder>, ...builder
  kwargs}, "activation", "anchors": {"min_sizes", "steps", "variance"}, "source": {"path", "md5"} | null,
  "tensors": <count>, "params": <learnable count>}``. ``load_model_file`` needs only ``config`` (anything else is
  informative), so any exporter that writes ``dataclasses.asdict(model.config)`` there is compatible.
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
from pathlib import Path

import torch
from torch import Tensor, nn

from detkd.registry import lookup

CARD_FORMAT = "detkd-model/1"


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
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as a torch checkpoint with weights_only=True ({e})") from e
    return _unwrap(obj, path)


def check_state(model: nn.Module, sd: dict[str, Tensor], source) -> None:
    """Raise ``ValueError`` naming missing / unexpected keys and shape mismatches of ``sd`` against ``model``."""
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(want[k].shape)}"
              for k in want if k in sd and sd[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" ... (+{len(items) - 12} more)" if len(items) > 12 else ""
                parts.append(f"{label} ({len(items)}): {', '.join(items[:12])}{more}")
        raise ValueError(f"{source}: does not fit {type(model).__name__}: " + "; ".join(parts))


def save_model_file(model: nn.Module, out, source: dict | None = None) -> dict:
    """Write ``out`` (.safetensors) + its ``.json`` card for a model that has a ``config`` dataclass."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.asdict(model.config)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(out), metadata={"format": "pt"})
    card = {
        "format": CARD_FORMAT,
        "architecture": cfg["name"],
        "config": cfg,
        "activation": cfg.get("activation"),
        "anchors": {k: cfg[k] for k in ("min_sizes", "steps", "variance") if k in cfg},
        "source": source,
        "tensors": len(sd),
        "params": sum(p.numel() for p in model.parameters()),
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=2))
    return card


def build_from_card(card: dict, where="card") -> nn.Module:
    cfg = dict(card.get("config") or card.get("model") or {})
    if "name" not in cfg:
        raise ValueError(f"{where}: model card has no config.name (keys: {list(card)})")
    name = cfg.pop("name")
    try:
        return lookup("model", name)(**cfg)
    except TypeError as e:
        raise ValueError(f"{where}: config does not fit builder {name!r}: {e}") from e


def load_model_file(path) -> tuple[nn.Module, dict]:
    """Build the model described by ``<path>.json`` and load ``path`` into it strictly; returns ``(model, card)``."""
    path = Path(path)
    card_path = path.with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if not card_path.is_file():
        raise FileNotFoundError(f"model card not found: {card_path} (expected beside {path.name})")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{card_path}: invalid JSON ({e})") from e
    model = build_from_card(card, card_path)
    sd = load_state_file(path)
    check_state(model, sd, path)
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model, card


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
    return save_model_file(model, out, source={"path": str(src.resolve()), "md5": md5sum(src)})


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
