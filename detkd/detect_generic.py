"""Generic (multi-class) detection protocols: a framework's test-time geometry around any detkd detector.

A ``DetProtocol`` fixes how one image becomes the model's input and how boxes go back to the image: resize rule,
padding to a multiple of 32 (bottom/right) and the pad colour. Post-processing thresholds are the model's own
defaults (``model.postprocess``), so ``torchvision`` on an imported torchvision RetinaNet is torchvision's
``postprocess_detections`` (score 0.05, top 1000 per level, NMS 0.5, 300 detections) and ``mmdet-gfl`` on a GFL is
mmdet's test config of METHODS.md §3.2 (nms_pre 1000, score 0.05, NMS 0.6, 100 detections).

* ``torchvision``: ``GeneralizedRCNNTransform(800, 1333)`` in eval mode. scale = min(800 / short, 1333 / long);
  ``F.interpolate(bilinear, scale_factor=scale, recompute_scale_factor=True, align_corners=False)`` on the float
  image; pad to 32. torchvision normalises before resizing and pads with 0 after normalisation, i.e. with the mean
  colour: we resize the 0..255 image (bilinear interpolation is linear, so only rounding differs) and pad with the
  ImageNet mean x 255. Boxes go back with torchvision's ``resize_boxes`` ratios (float32 original / resized).
* ``mmdet-gfl``: mmdet v2 test pipeline ``Resize(img_scale=(1333, 800), keep_ratio=True)``: scale = min(1333 / long,
  800 / short), new size ``int(w * scale + 0.5) x int(h * scale + 0.5)``, ``cv2.INTER_LINEAR`` on the uint8 image;
  pad to 32 with the mmdet mean colour (0 after normalisation); boxes divided by (new_w / w, new_h / h).

``detect_image(model, rgb, protocol)`` returns ``{"boxes" [N, 4] xyxy original pixels, "scores" [N], "labels" [N]}``.
``write_coco_results`` writes a COCO results list (``image_id`` = the image file's stem, ``category_id`` = the
model's own label id, ``bbox`` = x, y, w, h).
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DetProtocol:
    name: str
    resize: str  # "torchvision" (F.interpolate on the float image) | "mmcv" (cv2 on the uint8 image)
    short: int
    long: int
    pad_colour: tuple[float, float, float]  # RGB 0..255 (the normaliser's mean: 0 after normalisation)
    size_divisible: int = 32


PROTOCOLS: dict[str, DetProtocol] = {
    "torchvision": DetProtocol("torchvision", "torchvision", 800, 1333, (0.485 * 255, 0.456 * 255, 0.406 * 255)),
    "mmdet-gfl": DetProtocol("mmdet-gfl", "mmcv", 800, 1333, (123.675, 116.28, 103.53)),
}


def get_protocol(name: str | DetProtocol) -> DetProtocol:
    if isinstance(name, DetProtocol):
        return name
    if name not in PROTOCOLS:
        near = difflib.get_close_matches(str(name), list(PROTOCOLS), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ValueError(f"unknown detection protocol {name!r}{hint} (known: {', '.join(PROTOCOLS)})")
    return PROTOCOLS[name]


def preprocess(image_rgb: np.ndarray, protocol: str | DetProtocol) -> tuple[torch.Tensor, tuple[int, int], tuple]:
    """``(x float32 [1, 3, Hp, Wp] RGB 0..255 padded, (h, w) resized valid size, box scale (sx, sy))``.

    Boxes in input pixels map back to the original image as ``x * sx``, ``y * sy``.
    """
    p = get_protocol(protocol)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image_rgb.shape}")
    h0, w0 = image_rgb.shape[:2]
    if p.resize == "torchvision":
        scale = min(p.short / min(h0, w0), p.long / max(h0, w0))
        x = torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1))).float()
        x = F.interpolate(x[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                          align_corners=False)
        h, w = x.shape[-2:]
        sy = float(torch.tensor(h0, dtype=torch.float32) / torch.tensor(h, dtype=torch.float32))
        sx = float(torch.tensor(w0, dtype=torch.float32) / torch.tensor(w, dtype=torch.float32))
    elif p.resize == "mmcv":
        scale = min(p.long / max(h0, w0), p.short / min(h0, w0))
        w, h = int(w0 * scale + 0.5), int(h0 * scale + 0.5)
        img = cv2.resize(image_rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()[None]
        sx, sy = w0 / w, h0 / h
    else:
        raise ValueError(f"protocol {p.name}: unknown resize rule {p.resize!r}")
    d = p.size_divisible
    hp, wp = math.ceil(h / d) * d, math.ceil(w / d) * d
    padded = torch.tensor(p.pad_colour, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, hp, wp).clone()
    padded[..., :h, :w] = x
    return padded, (int(h), int(w)), (sx, sy)


@torch.no_grad()
def detect_image(model: nn.Module, image_rgb: np.ndarray, protocol: str | DetProtocol) -> dict[str, torch.Tensor]:
    """Detections of one RGB uint8 image in original-image pixels (see the module docstring)."""
    x, size, (sx, sy) = preprocess(image_rgb, protocol)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        d = model(x.to(device), decode=True, image_sizes=[size]).dets[0]
    finally:
        model.train(was_training)
    boxes = d["boxes"].cpu()
    # float32 products, as torchvision's resize_boxes / mmdet's division
    scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
    return {"boxes": boxes * scale, "scores": d["scores"].cpu(), "labels": d["labels"].cpu()}


def coco_results(image_id, dets: dict) -> list[dict]:
    """COCO results entries (``bbox`` x, y, w, h) of one image's detections."""
    out = []
    for (x1, y1, x2, y2), s, c in zip(dets["boxes"].tolist(), dets["scores"].tolist(), dets["labels"].tolist()):
        out.append({"image_id": image_id, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(s)})
    return out


def draw(image_rgb: np.ndarray, dets: dict, out_png, class_names=None, min_score: float = 0.3) -> Path:
    """PNG with boxes labelled ``name score`` (class names from the model card when known, else the label id)."""
    canvas = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    for (x1, y1, x2, y2), s, c in zip(dets["boxes"].tolist(), dets["scores"].tolist(), dets["labels"].tolist()):
        if s < min_score:
            continue
        name = class_names[c] if class_names and 0 <= c < len(class_names) else str(c)
        cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), (0, 0, 255), 2)
        cv2.putText(canvas, f"{name} {s:.2f}", (int(x1), max(int(y1) - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_png), canvas):
        raise ValueError(f"{out_png}: could not write the PNG")
    return out_png


def detect_files(weights, protocol: str, out_dir, fmt: str, images) -> list[Path]:
    """``detkd detect`` for multi-class detectors: ``coco`` writes ``out_dir/detections.json``, ``png`` one PNG each."""
    from detkd.data.image import read_image
    from detkd.models.weights import load_model_file

    if fmt not in ("coco", "png"):
        raise ValueError(f"unknown output format {fmt!r} for protocol {protocol!r}; choose coco or png")
    p = get_protocol(protocol)
    model, card = load_model_file(weights)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, written = [], []
    for path in map(Path, images):
        image = read_image(path)
        dets = detect_image(model, image, p)
        if fmt == "coco":
            results += coco_results(path.stem, dets)
        else:
            written.append(draw(image, dets, out_dir / f"{path.stem}.png", card.get("class_names")))
    if fmt == "coco":
        target = out_dir / "detections.json"
        target.write_text(json.dumps(results))
        written.append(target)
    return written
