"""COCO data sets (bbox): training samples and the evaluation view of an instances file. The reader and its
rules (contiguous labels, crowd and difficult objects, tiny boxes, empty images) are in
:mod:`detkd.data.coco_gt` (torch-free), re-exported here.
"""
from __future__ import annotations

from typing import Sequence

from detkd.data.coco_gt import (  # noqa: F401  (re-exported)
    CocoCategories, categories_of, check_coco, load_coco_json, read_coco,
)
from detkd.data.detection import DetectionDataset, DetectionEvalSet, ResizeConfig
from detkd.registry import register


class COCODetection(DetectionDataset):
    """COCO samples (``detkd.data.detection`` conventions); ``self.categories`` maps labels to category ids."""

    def __init__(self, ann_file, images_dir, resize: ResizeConfig | None = ResizeConfig((800,), 1333),
                 augment: bool = False, drop_empty: bool = False, train_difficult: bool = False, seed: int = 0):
        records, self.categories = read_coco(ann_file, images_dir, drop_empty=drop_empty)
        self.class_names: Sequence[str] = self.categories.names
        super().__init__(records, resize=resize, augment=augment, train_difficult=train_difficult, seed=seed)


@register("dataset")
def coco(*, ann_file: str, images_dir: str, split: str = "train", val_ann_file: str | None = None,
         val_images_dir: str | None = None, img_size: int | None = None, short: list[int] | None = None,
         max_long: int = 1333, augment: bool = True, drop_empty: bool = True, train_difficult: bool = False,
         seed: int = 0):
    """COCO instances (bbox). ``split="train"``: training samples (mmdet's 1333x800 resize by default;
    ``img_size`` is a one-value shorthand for ``short``). ``split="val"``: the evaluation view
    (``DetectionEvalSet``, every image kept) of ``val_ann_file`` / ``val_images_dir``."""
    if split == "val":
        if not val_ann_file:
            raise ValueError("coco: split='val' needs val_ann_file (and val_images_dir)")
        records, cats = read_coco(val_ann_file, val_images_dir)
        return DetectionEvalSet(records, cats.names, ann_file=val_ann_file)
    if split != "train":
        raise ValueError(f"coco: unknown split {split!r} (expected 'train' or 'val')")
    resize = ResizeConfig(tuple(short or ((img_size,) if img_size else (800,))), max_long)
    return COCODetection(ann_file, images_dir, resize=resize, augment=augment, drop_empty=drop_empty,
                         train_difficult=train_difficult, seed=seed)
