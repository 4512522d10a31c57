"""COCO instances reader (``instances_*.json``), bbox detection only, without torch so that ``detkd eval coco``
starts fast. Re-exported by ``detkd.data.coco``, which builds the training / evaluation sets on these records.

* Categories: COCO's non-contiguous ids, sorted ascending, become contiguous labels ``1..K``
  (``CocoCategories.label_of[cat_id]``, back with ``cat_ids[label - 1]``).
* Boxes: COCO ``bbox = [x, y, w, h]`` in continuous pixels -> detkd xyxy ``[x, y, x + w, y + h]`` (no +1).
* ``iscrowd = 1`` annotations are kept as ignore regions (``DetRecord.crowd``; ``target["ignore_boxes"]``).
  A non-standard ``difficult = 1`` field (written by ``detkd convert voc2coco`` and SynthShapes, together with
  ``iscrowd = 1`` so that COCO evaluation ignores them as VOC does) marks a VOC difficult object instead: it
  trains only with ``train_difficult=True``, exactly as the VOC reader.
* Annotations with ``w <= 1`` or ``h <= 1`` are dropped, with one warning giving the count.
* A non-standard ``truncated`` field (same writers) is kept; absent means False.
* Images without annotations are kept (evaluation needs them); ``drop_empty=True`` drops them (training).

Errors name the file and the offending entry: duplicated image ids, an annotation of an unknown image or
category, a malformed bbox.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detkd.data.det_record import DetRecord

@dataclass
class CocoCategories:
    """``cat_ids`` ascending; label ``l`` (1..K) is ``cat_ids[l - 1]`` and is named ``names[l - 1]``."""

    cat_ids: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def label_of(self) -> dict[int, int]:
        return {c: i + 1 for i, c in enumerate(self.cat_ids)}


def read_json_file(path: str | Path, what: str) -> tuple[object, str]:
    """``(parsed JSON, path as str)``; a missing file or invalid JSON fails naming ``what`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text()), str(path)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_coco_json(path_or_dict: str | Path | dict) -> tuple[dict, str]:
    """``(dataset dict, source name)``; the file must exist and hold ``images``, ``annotations``, ``categories``."""
    data, src = (path_or_dict, "<COCO dict>") if isinstance(path_or_dict, dict) else \
        read_json_file(path_or_dict, "COCO annotation file")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{src}: missing list {key!r} (a COCO instances file has images, annotations, categories)")
    return data, src


def check_coco(data: dict, src: str) -> None:
    """Raise ``ValueError`` naming ``src`` and the entry for duplicated image / category ids and annotations
    of an unknown image or category or with a malformed bbox."""
    seen: dict = {}
    for k, im in enumerate(data["images"]):
        if im.get("id") in seen:
            raise ValueError(f"{src}: images[{k}] repeats image id {im.get('id')} (first at images[{seen[im['id']]}])")
        seen[im.get("id")] = k
    cats = {}
    for k, c in enumerate(data["categories"]):
        if c.get("id") in cats:
            raise ValueError(f"{src}: categories[{k}] repeats category id {c.get('id')}")
        cats[c.get("id")] = k
    for k, a in enumerate(data["annotations"]):
        if a.get("image_id") not in seen:
            raise ValueError(f"{src}: annotations[{k}] (id {a.get('id')}) refers to unknown image id "
                             f"{a.get('image_id')}")
        if a.get("category_id") not in cats:
            raise ValueError(f"{src}: annotations[{k}] (id {a.get('id')}) has unknown category id "
                             f"{a.get('category_id')}")
        bb = a.get("bbox")
        if not (isinstance(bb, list) and len(bb) == 4 and all(isinstance(v, (int, float)) for v in bb)
                and np.isfinite(bb).all()):
            raise ValueError(f"{src}: annotations[{k}] (id {a.get('id')}) bbox is not 4 finite numbers: {bb!r}")


def categories_of(data: dict) -> CocoCategories:
    cats = sorted(data["categories"], key=lambda c: c["id"])
    return CocoCategories(tuple(int(c["id"]) for c in cats), tuple(str(c.get("name", c["id"])) for c in cats))


def read_coco(ann_file: str | Path | dict, images_dir: str | Path | None = None,
              drop_empty: bool = False) -> tuple[list[DetRecord], CocoCategories]:
    """Records in ``images`` order (``image_id`` = the COCO integer id, ``path = images_dir / file_name``)
    and the category map. See the module docstring for crowd, difficult, tiny boxes and empty images."""
    data, src = load_coco_json(ann_file)
    check_coco(data, src)
    cats = categories_of(data)
    label_of = cats.label_of
    per_image: dict = {im["id"]: [] for im in data["images"]}
    tiny = 0
    for a in data["annotations"]:
        x, y, w, h = (float(v) for v in a["bbox"])
        if w <= 1 or h <= 1:
            tiny += 1
            continue
        per_image[a["image_id"]].append(a)
    if tiny:
        warnings.warn(f"{src}: dropped {tiny} annotation(s) with bbox width or height <= 1", stacklevel=2)
    base = Path(images_dir) if images_dir is not None else Path()
    records = []
    for im in data["images"]:
        anns = per_image[im["id"]]
        if drop_empty and not anns:
            continue
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], np.float64).reshape(-1, 4)
        difficult = np.array([bool(a.get("difficult", 0)) for a in anns], bool)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool) & ~difficult
        records.append(DetRecord(
            image_id=int(im["id"]), path=base / im.get("file_name", f"{im['id']}.jpg"),
            width=int(im.get("width", 0)), height=int(im.get("height", 0)), boxes=boxes,
            labels=[label_of[a["category_id"]] for a in anns], difficult=difficult, crowd=crowd,
            truncated=[bool(a.get("truncated", 0)) for a in anns]))
    return records, cats
