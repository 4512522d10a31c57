"""Object detection on image files with the reference test pipelines of generic detectors.

A ``DetProtocol`` fixes geometry and post-processing:

* ``torchvision``: torchvision's ``GeneralizedRCNNTransform`` + ``postprocess_detections`` in eval mode:
  scale = min(800 / short side, 1333 / long side), ``F.interpolate(bilinear, align_corners=False,
  recompute_scale_factor=True)``, zero padding to a multiple of 32 (the model zeroes the normalised padded
  area, as torchvision pads its normalised image), score > 0.05, per-class NMS 0.5, 100 detections, boxes
  scaled back with torchvision's per-axis ratios.
* ``jwyang-600``: faster-rcnn.pytorch's test (FGFI): short side 600 (no long-side cap), ``cv2.resize``
  INTER_LINEAR on the float image, no padding, score > 0.0, per-class NMS 0.3, 100 detections.
* ``torchvision-320``: ``torchvision`` at SynthShapes' scale (short side 320, long side 533).
* ``mmdet-600``: mmdetection 2.0's VOC test (DeFeat): keep-ratio resize to fit (1000, 600) (cv2 bilinear),
  pad to 32, score > 0.05, per-class NMS 0.5, 100 detections.

Images are numpy ``uint8 [H, W, 3]`` RGB; ``detect_image`` returns original-image pixels
``{"boxes" [N, 4] xyxy, "scores" [N], "labels" [N]}`` (the model's own label ids).
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

from detkd.data.image import read_image


@dataclass(frozen=True)
class DetProtocol:
    name: str
    min_size: int
    max_size: int | None
    resize: str  # "torch" (F.interpolate, torchvision) | "cv2" (cv2.resize INTER_LINEAR)
    size_divisible: int
    score_thresh: float
    nms_thresh: float
    detections_per_img: int


DET_PROTOCOLS: dict[str, DetProtocol] = {
    "torchvision": DetProtocol("torchvision", 800, 1333, "torch", 32, 0.05, 0.5, 100),
    "jwyang-600": DetProtocol("jwyang-600", 600, None, "cv2", 1, 0.0, 0.3, 100),
    "mmdet-600": DetProtocol("mmdet-600", 600, 1000, "cv2", 32, 0.05, 0.5, 100),
    "torchvision-320": DetProtocol("torchvision-320", 320, 533, "torch", 32, 0.05, 0.5, 100),
}


def get_det_protocol(name: str | DetProtocol) -> DetProtocol:
    if isinstance(name, DetProtocol):
        return name
    if name not in DET_PROTOCOLS:
        near = difflib.get_close_matches(str(name), list(DET_PROTOCOLS), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ValueError(f"unknown detector protocol {name!r}{hint} (known: {', '.join(DET_PROTOCOLS)})")
    return DET_PROTOCOLS[name]


def preprocess(image_rgb: np.ndarray, protocol) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(float32 [1, 3, H', W'] RGB 0..255 padded, (h, w) resized valid size)``."""
    p = get_det_protocol(protocol)
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image_rgb.shape}")
    h0, w0 = image_rgb.shape[:2]
    scale = p.min_size / min(h0, w0)
    if p.max_size is not None:
        scale = min(scale, p.max_size / max(h0, w0))
    if p.resize == "torch":
        x = torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1))).float()
        x = F.interpolate(x[None], scale_factor=scale, mode="bilinear", recompute_scale_factor=True,
                          align_corners=False)
    else:
        img = cv2.resize(image_rgb.astype(np.float32), None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    h, w = x.shape[-2:]
    d = p.size_divisible
    ph, pw = int(math.ceil(h / d) * d), int(math.ceil(w / d) * d)
    if (ph, pw) != (h, w):
        x = F.pad(x, (0, pw - w, 0, ph - h))
    return x, (int(h), int(w))


def rescale_boxes(boxes: torch.Tensor, resized: tuple[int, int], original: tuple[int, int]) -> torch.Tensor:
    """torchvision's ``resize_boxes`` from the resized image back to the original one."""
    rh, rw = (torch.tensor(o, dtype=torch.float32) / torch.tensor(s, dtype=torch.float32)
              for o, s in zip(original, resized))
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * rw, y1 * rh, x2 * rw, y2 * rh), dim=1)


@torch.no_grad()
def detect_image(model: nn.Module, image_rgb: np.ndarray, protocol="torchvision") -> dict[str, torch.Tensor]:
    """Detections of one image in original pixels (see the module docstring)."""
    p = get_det_protocol(protocol)
    x, hw = preprocess(image_rgb, p)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = model(x.to(device), image_sizes=[hw])
        d = model.postprocess(out, score_thresh=p.score_thresh, nms_thresh=p.nms_thresh,
                              detections_per_img=p.detections_per_img)[0]
    finally:
        model.train(was_training)
    boxes = rescale_boxes(d["boxes"].float().cpu(), hw, image_rgb.shape[:2])
    return {"boxes": boxes, "scores": d["scores"].cpu(), "labels": d["labels"].cpu()}


@torch.no_grad()
def detect_batch(model: nn.Module, images: list[torch.Tensor], metas: list[dict], protocol) -> list[dict]:
    """Batched evaluation (``detkd.infer.detect_batch`` delegates here): padded inputs ``[3, H_i, W_i]`` from
    ``detkd.infer.ProtocolImages`` with ``meta["image_size"]`` (valid resized size) and ``meta["orig_size"]``;
    same-shape inputs run together with their ``image_sizes``. Detections in original pixels."""
    p = get_det_protocol(protocol)
    device = next(model.parameters()).device
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    dets: list[dict | None] = [None] * len(images)
    for idx in groups.values():
        x = torch.stack([images[i] for i in idx]).to(device)
        sizes = [tuple(metas[i]["image_size"]) for i in idx]
        out = model(x, image_sizes=sizes)
        batch = model.postprocess(out, score_thresh=p.score_thresh, nms_thresh=p.nms_thresh,
                                  detections_per_img=p.detections_per_img)
        for i, hw, d in zip(idx, sizes, batch):
            dets[i] = {"boxes": rescale_boxes(d["boxes"].float().cpu(), hw, metas[i]["orig_size"]),
                       "scores": d["scores"].cpu(), "labels": d["labels"].cpu()}
    return dets


def class_names(card: dict) -> list[str]:
    """Names by label id (index 0 = background) from the card, or COCO's for a 90-class torchvision import."""
    cfg = card.get("model") or {}
    names = card.get("class_names") or cfg.get("class_names")
    if names:
        return ["__background__", *names]
    if (card.get("source") or {}).get("format") == "torchvision-fasterrcnn" and cfg.get("num_classes") == 90:
        from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

        return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    return ["__background__"] + [f"class_{i}" for i in range(1, int(cfg.get("num_classes", 0)) + 1)]


def cfg_name(card: dict) -> str:
    return str((card.get("model") or {}).get("name"))


def draw(image_rgb: np.ndarray, dets: dict, names: list[str], out_png, min_score: float = 0.3) -> Path:
    canvas = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    for box, score, label in zip(dets["boxes"].tolist(), dets["scores"].tolist(), dets["labels"].tolist()):
        if score < min_score:
            continue
        x1, y1, x2, y2 = (int(v) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 0, 255), 2)
        name = names[label] if label < len(names) else str(label)
        cv2.putText(canvas, f"{name} {score:.2f}", (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (255, 255, 255), 1)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_png), canvas):
        raise ValueError(f"{out_png}: could not write the PNG")
    return out_png


def detect_files(weights, protocol: str, out_dir, fmt: str, images) -> list[Path]:
    """``detkd detect`` for generic detectors.

    ``png``: ``out_dir/<stem>.png`` with class names and scores. ``coco``: ``out_dir/detections.json``, a COCO
    results list (``image_id`` = the file stem, ``category_id`` = the model's label id, ``bbox`` xywh).
    ``voc``: ``out_dir/<class name>.txt`` (VOC devkit results: ``stem score x1 y1 x2 y2``, 1-based pixels).
    """
    from detkd.models.weights import load_model_file

    if fmt not in ("png", "coco", "voc"):
        raise ValueError(f"unknown output format {fmt!r} for a detector; choose png, coco or voc")
    p = get_det_protocol(protocol)
    model, card = load_model_file(weights)
    if not hasattr(model, "roi_forward") and not hasattr(model, "postprocess"):
        raise ValueError(f"{weights}: {cfg_name(card)} is not a detector")
    names = class_names(card)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, results, per_class = [], [], {}
    for path in map(Path, images):
        image = read_image(path)
        d = detect_image(model, image, p)
        if fmt == "png":
            written.append(draw(image, d, names, out_dir / f"{path.stem}.png"))
            continue
        for box, score, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
            x1, y1, x2, y2 = box
            results.append({"image_id": path.stem, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score)})
            name = names[label] if label < len(names) else f"class_{label}"
            per_class.setdefault(name, []).append(f"{path.stem} {score:.6f} {x1 + 1:.1f} {y1 + 1:.1f} {x2 + 1:.1f} {y2 + 1:.1f}")
    if fmt == "coco":
        target = out_dir / "detections.json"
        target.write_text(json.dumps(results))
        written.append(target)
    elif fmt == "voc":
        for name, lines in per_class.items():
            target = out_dir / f"{name}.txt"
            target.write_text("\n".join(lines) + "\n")
            written.append(target)
    return written
