"""Generic multi-class detection samples: the record every reader (VOC, COCO, SynthShapes) produces, the
keep-ratio resize / flip / multi-scale augmentation, and the dataset that turns records into training samples.

Box convention: detkd boxes are **continuous** pixel coordinates ``x1, y1, x2, y2`` (a box covering pixel
columns ``c0..c1`` of the image, 0-based and inclusive, is ``[c0, ., c1 + 1, .]``; its width is the pixel count).
Each reader documents how its file format maps onto this (VOC: the docstring of :mod:`detkd.data.voc_gt`).

Sample (what ``DetectionDataset[i]`` returns):
``(image float32 [3, h, w] RGB 0..255, target, meta)`` with
``target = {boxes float32 [N, 4] xyxy input pixels, labels int64 [N] (1..K), ignore_boxes float32 [M, 4]}``
(``ignore_boxes``: COCO crowd regions and, unless trained on, VOC difficult objects; an assigner may ignore
priors that fall in them; objects whose box is under ``MIN_BOX_SIDE`` pixels wide or high after resizing are
dropped) and ``meta = {image_id, path, orig_size (H, W), size (h, w), scale, flipped, index}``.
A prediction in input pixels maps back to the original image by un-flipping (``x -> w - x``) and
multiplying x by ``W / w`` and y by ``H / h`` (``scale`` is the nominal factor; the rounded size makes the
per-axis factors differ from it slightly).
``h, w`` differ per image (keep-ratio resize); batching pads them (``detkd.data.loader``).

Augmentation randomness is a pure function of ``(seed, epoch, index)``: call ``set_epoch(e)`` each epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detkd.data.det_record import DetRecord
from detkd.data.image import read_image
from detkd.data.transforms import keep_ratio_scale, resize_keep_ratio  # noqa: F401  (keep_ratio_scale re-exported)


MIN_BOX_SIDE = 1.0  # training boxes narrower or shorter than this (input pixels, after resizing) are dropped


def collapsed_free(boxes: np.ndarray, min_side: float = MIN_BOX_SIDE) -> np.ndarray:
    """Bool mask ``[N]`` of boxes ``[N, 4]`` xyxy whose width and height are both at least ``min_side``."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    return ((boxes[:, 2] - boxes[:, 0]) >= min_side) & ((boxes[:, 3] - boxes[:, 1]) >= min_side)


@dataclass
class ResizeConfig:
    """Keep-ratio resize: the short side goes to ``short`` (one of ``shorts``, drawn per sample when training
    multi-scale) unless the long side would exceed ``max_long``; then the long side goes to ``max_long``.
    FGFI (py-faster-rcnn): ``shorts=(600,), max_long=1000``; mmdet VOC 1000x600: ``(600,), 1000``;
    mmdet COCO 1333x800: ``(800,), 1333``."""

    shorts: tuple[int, ...] = (600,)
    max_long: int = 1000


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror ``image [H,W,3]`` and continuous xyxy ``boxes``: ``x -> W - x`` (x1 and x2 swap)."""
    w = image.shape[1]
    out = boxes.copy()
    out[:, 0], out[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), out


def _read_record(records: list[DetRecord], index: int, owner: str) -> tuple[DetRecord, np.ndarray]:
    """``records[index]`` and its image (uint8 RGB), checked against the size the annotation states."""
    if not 0 <= index < len(records):
        raise IndexError(f"{owner} index {index} out of range [0, {len(records)})")
    rec = records[index]
    image = read_image(rec.path)
    if image.shape[:2] != (rec.height, rec.width):
        raise ValueError(f"{rec.path}: image is {image.shape[1]}x{image.shape[0]} (WxH) but its annotation says "
                         f"{rec.width}x{rec.height}")
    return rec, image


class DetectionEvalSet(torch.utils.data.Dataset):
    """The evaluation view of records, as the detector evaluation path reads it (``detkd.infer.ProtocolImages``):
    ``(image uint8 [H, W, 3] RGB at original size, meta = {image_id, path, orig_size (H, W), index})``; the
    test-time resize belongs to the inference protocol. ``records`` / ``class_names`` feed the evaluators."""

    def __init__(self, records: list[DetRecord], class_names=None, ann_file=None):
        self.records = list(records)
        self.class_names = tuple(class_names) if class_names is not None else None
        self.ann_file = ann_file  # COCO: the instances file (or dict) the records came from

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        rec, image = _read_record(self.records, index, type(self).__name__)
        return image, {"image_id": rec.image_id, "path": str(rec.path), "orig_size": (rec.height, rec.width),
                       "index": int(index)}


class DetectionDataset(torch.utils.data.Dataset):
    """Records -> samples (see the module docstring). ``augment`` turns on the random horizontal flip
    (p = 1/2) and, with several ``resize.shorts``, the multi-scale draw; without it the first short side is
    used and nothing is flipped. ``resize=None`` keeps the original size."""

    def __init__(self, records: list[DetRecord], resize: ResizeConfig | None = ResizeConfig(),
                 augment: bool = False, train_difficult: bool = False, seed: int = 0):
        self.records = list(records)
        self.resize = resize
        self.augment = augment
        self.train_difficult = train_difficult
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        rec, image = _read_record(self.records, index, type(self).__name__)
        boxes, labels, ignore = rec.split(self.train_difficult)
        rng = self.rng(index)
        scale, flipped = 1.0, False
        if self.resize is not None:
            shorts = self.resize.shorts
            short = shorts[int(rng.integers(len(shorts)))] if self.augment and len(shorts) > 1 else shorts[0]
            both = np.concatenate([boxes, ignore])
            scale = keep_ratio_scale(image.shape[0], image.shape[1], short, self.resize.max_long)
            image, both, _, _ = resize_keep_ratio(image, both, None, short, self.resize.max_long)
            boxes, ignore = both[: len(boxes)], both[len(boxes):]
            keep = collapsed_free(boxes)  # a box thinner than a pixel after resizing cannot be learned
            boxes, labels = boxes[keep], labels[keep]
        if self.augment and rng.integers(2):
            image, both = hflip(image, np.concatenate([boxes, ignore]))
            boxes, ignore = both[: len(boxes)], both[len(boxes):]
            flipped = True
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(labels, dtype=torch.int64),
            "ignore_boxes": torch.as_tensor(ignore, dtype=torch.float32).reshape(-1, 4),
        }
        meta = {"image_id": rec.image_id, "path": str(rec.path), "orig_size": (rec.height, rec.width),
                "size": tuple(image.shape[:2]), "scale": float(scale), "flipped": flipped, "index": int(index)}
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        return chw, target, meta
