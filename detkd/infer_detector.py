"""Object detection on image files with the reference test pipelines of generic detectors.

A ``DetProtocol`` fixes a framework's test-time geometry around any detkd detector (resize rule, padding to a
multiple of ``size_divisible`` bottom/right with ``pad_colour``) and, optionally, post-processing thresholds
(``None``: the model's own defaults, ``model.thresholds``):

* ``torchvision``: ``GeneralizedRCNNTransform(800, 1333)`` in eval mode: scale = min(800 / short, 1333 / long),
  ``F.interpolate(bilinear, align_corners=False, recompute_scale_factor=True)`` on the float image, pad to 32.
  torchvision normalises before padding with 0, i.e. it pads with the mean colour: we pad the 0..255 image with
  the ImageNet mean x 255 (Faster R-CNN also zeroes its normalised padded area). Post-processing: the model's own
  (torchvision's values: Faster R-CNN score 0.05 / NMS 0.5 / 100; RetinaNet score 0.05 / top 1000 per level /
  NMS 0.5 / 300).
* ``torchvision-320``: ``torchvision`` at SynthShapes' scale (short side 320, long side 533); any
  ``torchvision-<N>`` works the same way (long side ``round(N * 5 / 3)``), e.g. for small calibration runs.
* ``jwyang-600``: faster-rcnn.pytorch's test (FGFI): short side 600 (no long-side cap), ``cv2.resize``
  INTER_LINEAR on the float image, no padding, score > 0.0, per-class NMS 0.3, 100 detections.
* ``mmdet-600``: mmdetection 2.0's VOC test (DeFeat): keep-ratio resize to fit (1000, 600) (cv2 bilinear),
  pad to 32 with the mmdet mean, score > 0.05, per-class NMS 0.5, 100 detections.
* ``mmdet-gfl``: mmdet v2's COCO test pipeline ``Resize(img_scale=(1333, 800), keep_ratio=True)``: new size
  ``int(w * scale + 0.5) x int(h * scale + 0.5)``, ``cv2.INTER_LINEAR`` on the uint8 image, pad to 32 with the
  mmdet mean; post-processing the model's own (GFL: METHODS.md §3.2's nms_pre 1000, score 0.05, NMS 0.6, 100).
* ``mmdet-voc``: the same with mmdet's VOC scale (1000, 600) and the model's own thresholds (LD's GFL and DeFeat's
  RetinaNet VOC tests; ``mmdet-600`` fixes Faster R-CNN's NMS 0.5 instead).

Boxes go back to the original image with torchvision's ``resize_boxes`` ratios (float32 original / resized per
axis). Images are numpy ``uint8 [H, W, 3]`` RGB; ``detect_image`` returns original-image pixels
``{"boxes" [N, 4] xyxy, "scores" [N], "labels" [N]}`` (the model's own label ids).
"""
from __future__ import annotations

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
from detkd.infer import draw_detections
from detkd.registry import close_matches

IMAGENET_PAD = (0.485 * 255, 0.456 * 255, 0.406 * 255)
MMDET_PAD = (123.675, 116.28, 103.53)


@dataclass(frozen=True)
class DetProtocol:
    name: str
    min_size: int
    max_size: int | None
    resize: str  # "torch" (F.interpolate, torchvision) | "cv2" (float image, fx/fy) | "mmcv" (uint8, rounded size)
    size_divisible: int = 32
    pad_colour: tuple[float, float, float] = (0.0, 0.0, 0.0)  # RGB 0..255
    thresholds: dict | None = None  # post-processing overrides; None = the model's defaults


class _DetProtocols(dict):
    """The protocol table; besides its entries it answers ``torchvision-<N>`` for any short side N (16..4096):
    ``torchvision``'s test at that scale (long side cap ``round(N * 5 / 3)``, the 800 / 1333 ratio), for
    models trained at small sizes (``torchvision-320`` is SynthShapes' default)."""

    PREFIX = "torchvision-"

    def _scaled(self, key) -> DetProtocol | None:
        if isinstance(key, str) and key.startswith(self.PREFIX) and key[len(self.PREFIX):].isdigit():
            n = int(key[len(self.PREFIX):])
            if 16 <= n <= 4096:
                return DetProtocol(key, n, round(n * 5 / 3), "torch", 32, IMAGENET_PAD)
        return None

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or self._scaled(key) is not None

    def __missing__(self, key) -> DetProtocol:
        p = self._scaled(key)
        if p is None:
            raise KeyError(key)
        return p


DET_PROTOCOLS: dict[str, DetProtocol] = _DetProtocols({
    "torchvision": DetProtocol("torchvision", 800, 1333, "torch", 32, IMAGENET_PAD),
    "jwyang-600": DetProtocol("jwyang-600", 600, None, "cv2", 1,
                              thresholds={"score_thresh": 0.0, "nms_thresh": 0.3, "max_dets": 100}),
    "mmdet-600": DetProtocol("mmdet-600", 600, 1000, "cv2", 32, MMDET_PAD,
                             thresholds={"score_thresh": 0.05, "nms_thresh": 0.5, "max_dets": 100}),
    "mmdet-gfl": DetProtocol("mmdet-gfl", 800, 1333, "mmcv", 32, MMDET_PAD),
    "mmdet-voc": DetProtocol("mmdet-voc", 600, 1000, "mmcv", 32, MMDET_PAD),
    "torchvision-320": DetProtocol("torchvision-320", 320, 533, "torch", 32, IMAGENET_PAD),
})


def get_det_protocol(name: str | DetProtocol) -> DetProtocol:
    if isinstance(name, DetProtocol):
        return name
    if name not in DET_PROTOCOLS:
        raise ValueError(f"unknown detector protocol {name!r}{close_matches(str(name), DET_PROTOCOLS)} "
                         f"(known: {', '.join(DET_PROTOCOLS)})")
    return DET_PROTOCOLS[name]


get_protocol = get_det_protocol


def preprocess(image_rgb: np.ndarray, protocol) -> tuple[torch.Tensor, tuple[int, int], tuple[float, float]]:
    """``(x float32 [1, 3, Hp, Wp] RGB 0..255 padded, (h, w) resized valid size, (sx, sy) box scale back)``."""
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
    elif p.resize == "cv2":
        img = cv2.resize(image_rgb.astype(np.float32), None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    elif p.resize == "mmcv":
        w, h = int(w0 * scale + 0.5), int(h0 * scale + 0.5)
        img = cv2.resize(image_rgb, (w, h), interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()[None]
    else:
        raise ValueError(f"protocol {p.name}: unknown resize rule {p.resize!r}")
    h, w = x.shape[-2:]
    d = p.size_divisible
    hp, wp = int(math.ceil(h / d) * d), int(math.ceil(w / d) * d)
    if (hp, wp) != (h, w):
        padded = torch.tensor(p.pad_colour, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, hp, wp).clone()
        padded[..., :h, :w] = x
        x = padded
    sy, sx = (float(torch.tensor(o, dtype=torch.float32) / torch.tensor(s, dtype=torch.float32))
              for o, s in ((h0, h), (w0, w)))
    return x, (int(h), int(w)), (sx, sy)


def rescale_boxes(boxes: torch.Tensor, scale: tuple[float, float]) -> torch.Tensor:
    """Boxes ``[N, 4]`` from the resized image back to the original one (float32 products, as torchvision)."""
    sx, sy = scale
    return boxes * torch.tensor([sx, sy, sx, sy], dtype=torch.float32)


@torch.no_grad()
def detect_image(model: nn.Module, image_rgb: np.ndarray, protocol="torchvision") -> dict[str, torch.Tensor]:
    """Detections of one image in original pixels (see the module docstring)."""
    p = get_det_protocol(protocol)
    x, hw, scale = preprocess(image_rgb, p)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = model(x.to(device), image_sizes=[hw])
        d = model.postprocess(out, **(p.thresholds or {}))[0]
    finally:
        model.train(was_training)
    boxes = rescale_boxes(d["boxes"].float().cpu(), scale)
    return {"boxes": boxes, "scores": d["scores"].cpu(), "labels": d["labels"].cpu()}


@torch.no_grad()
def detect_batch(model: nn.Module, images: list[torch.Tensor], metas: list[dict], protocol) -> list[dict]:
    """Batched evaluation (``detkd.infer.detect_batch`` delegates here): padded inputs ``[3, Hp_i, Wp_i]`` from
    ``detkd.infer.ProtocolImages`` with ``meta["image_size"]`` (valid resized size) and ``meta["box_scale"]``;
    same-shape inputs run together with their ``image_sizes``. Detections in original pixels."""
    p = get_det_protocol(protocol)
    device = next(model.parameters()).device
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    dets: list[dict | None] = [None] * len(images)
    for idx in groups.values():
        x = torch.stack([images[i] for i in idx]).to(device)
        out = model(x, image_sizes=[tuple(metas[i]["image_size"]) for i in idx])
        for i, d in zip(idx, model.postprocess(out, **(p.thresholds or {}))):
            dets[i] = {"boxes": rescale_boxes(d["boxes"].float().cpu(), metas[i]["box_scale"]),
                       "scores": d["scores"].cpu(), "labels": d["labels"].cpu()}
    return dets


def class_names(card: dict) -> list[str]:
    """Names by label id (index 0 = background) from the card, or COCO's for a 90-class torchvision import."""
    cfg = card.get("model") or {}
    names = card.get("class_names") or cfg.get("class_names")
    if names:
        return ["__background__", *names]
    fmt = (card.get("source") or {}).get("format")
    if fmt in ("torchvision-fasterrcnn", "torchvision-retinanet") and cfg.get("num_classes") in (90, 91):
        from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

        return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    return ["__background__"] + [f"class_{i}" for i in range(1, int(cfg.get("num_classes", 0)) + 1)]


def cfg_name(card: dict) -> str:
    return str((card.get("model") or {}).get("name"))


def detect_files(weights, protocol: str, out_dir, fmt: str, images, backend: str = "eager",
                 min_score: float = 0.3, progress: bool | None = None) -> list[Path]:
    """``detkd detect`` for generic detectors.

    ``png``: ``out_dir/<stem>.png`` with class names and the scores of boxes scoring at least ``min_score``
    (inputs from several folders mirror the input tree, see ``detkd.detect_outputs``). ``coco``:
    ``out_dir/detections.json``, a COCO results list (``image_id`` = the file stem, ``category_id`` = the model's label id, ``bbox`` xywh).
    ``voc``: ``out_dir/<class name>.txt`` (VOC devkit results: ``stem score x1 y1 x2 y2``, 1-based pixels).
    ``backend``: ``"eager"`` (the model file, BatchNorm folded) or ``"onnxruntime"`` (an ``.onnx`` exported
    with ``--dynamic-size``; see ``detkd.runtime``). Outputs that would clash (two PNGs at one path, two images
    with one id) are refused before the model runs. ``progress``: a bar over the images (``None``: on a terminal).
    """
    from tqdm.auto import tqdm

    from detkd.detect_outputs import png_targets, unique_stems
    from detkd.runtime import load_inference_model

    if fmt not in ("png", "coco", "voc"):
        raise ValueError(f"unknown output format {fmt!r} for an object detector; choose png, coco or voc")
    images = [Path(x) for x in images]
    out_dir = Path(out_dir)
    if fmt == "png":
        targets = png_targets(images, out_dir)
    else:
        unique_stems(images)
    p = get_det_protocol(protocol)
    model, card = load_inference_model(weights, backend)
    if not hasattr(model, "postprocess"):
        raise ValueError(f"{weights}: {cfg_name(card)} is not a detector")
    names = class_names(card)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, results, per_class = [], [], {}
    bar = tqdm(images, desc=f"detect ({p.name})", unit="img", disable=None if progress is None else not progress)
    for i, path in enumerate(bar):
        image = read_image(path)
        d = detect_image(model, image, p)
        if fmt == "png":
            written.append(draw_detections(image, d, targets[i], min_score=min_score, names=names))
            continue
        for box, score, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
            x1, y1, x2, y2 = box
            results.append({"image_id": path.stem, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score)})
            name = names[label] if label < len(names) else f"class_{label}"
            per_class.setdefault(name, []).append(
                f"{path.stem} {score:.6f} {x1 + 1:.1f} {y1 + 1:.1f} {x2 + 1:.1f} {y2 + 1:.1f}")
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
