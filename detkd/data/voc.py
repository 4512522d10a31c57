"""PASCAL VOC data sets: training samples and the evaluation view of one or several ``(root, split)`` pairs.
The annotation reader and the pixel convention (VOC's 1-based inclusive boxes <-> detkd's continuous xyxy) are
in :mod:`detkd.data.voc_gt` (torch-free), re-exported here.
"""
from __future__ import annotations

from typing import Sequence

from detkd.data.detection import DetectionDataset, DetectionEvalSet, ResizeConfig
from detkd.data.voc_gt import (  # noqa: F401  (re-exported)
    VOC_CLASSES, VOCObject, parse_voc_xml, read_image_set, read_voc, to_detkd_boxes, to_voc_pixels,
)
from detkd.registry import register


class VOCDetection(DetectionDataset):
    """VOC samples (``detkd.data.detection`` conventions) from one or several ``(root, split)`` pairs."""

    def __init__(self, roots, splits, class_names: Sequence[str] = VOC_CLASSES,
                 resize: ResizeConfig | None = ResizeConfig(), augment: bool = False,
                 train_difficult: bool = False, seed: int = 0):
        self.class_names = tuple(class_names)
        super().__init__(read_voc(roots, splits, class_names), resize=resize, augment=augment,
                         train_difficult=train_difficult, seed=seed)


@register("dataset")
def voc(*, root: str | None = None, roots: list[str] | None = None, splits: list[str] | None = None,
        split: str = "train", val_roots: list[str] | None = None, val_splits: list[str] | None = None,
        img_size: int | None = None, short: list[int] | None = None, max_long: int = 1000, augment: bool = True,
        train_difficult: bool = False, seed: int = 0, class_names: list[str] | None = None):
    """PASCAL VOC. ``split="train"``: training samples of ``roots`` x ``splits`` (VOC07+12 trainval:
    ``roots=[VOC2007, VOC2012], splits=[trainval, trainval]``), resized to short side ``short`` (several =
    multi-scale; ``img_size`` is a one-value shorthand) with the long side capped at ``max_long``.
    ``split="val"``: the evaluation view (``DetectionEvalSet``) of ``val_roots`` x ``val_splits`` (default: the
    first root's ``test`` set). ``root`` is shorthand for ``roots=[root]``; ``splits`` defaults to trainval."""
    names = tuple(class_names or VOC_CLASSES)
    if roots is None:
        if root is None:
            raise ValueError("voc: give root= or roots=")
        roots = [root]
    splits = splits or ["trainval"]
    if split == "val":
        vr = val_roots or [roots[0]]
        return DetectionEvalSet(read_voc(vr, val_splits or ["test"], names), names)
    if split != "train":
        raise ValueError(f"voc: unknown split {split!r} (expected 'train' or 'val')")
    resize = ResizeConfig(tuple(short or ((img_size,) if img_size else (600,))), max_long)
    return VOCDetection(roots, splits, names, resize=resize, augment=augment, train_difficult=train_difficult,
                        seed=seed)
