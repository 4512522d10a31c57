"""VOC annotations -> a COCO instances dict (``detkd convert voc2coco``).

* image id: the VOC id without underscores as an integer when every id is digits and underscores and they
  stay unique (``2007_000027`` -> 2007000027, the Detectron convention), else 1..N in image-set order; the VOC
  id is kept as ``voc_id``; ``file_name`` is ``<voc id>.jpg``.
* bbox: ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]`` (detkd's continuous box). COCO's plain IoU
  on these equals VOC's "+1" IoU on the XML boxes, so the same detections match the same GT under both.
* category ids 1..K in class-list order; ``area = w * h``.
* difficult objects get ``iscrowd = 1`` (COCO evaluation then ignores them, as VOC does) and ``difficult = 1``
  (so that :func:`detkd.data.coco_gt.read_coco` restores them as difficult, not as crowd).
"""
from __future__ import annotations

from typing import Sequence

from detkd.data.det_record import DetRecord
from detkd.data.voc_gt import VOC_CLASSES, read_voc


def coco_image_ids(voc_ids: Sequence[str]) -> list[int]:
    digits = [v.replace("_", "") for v in voc_ids]
    if all(d.isdigit() for d in digits) and len({int(d) for d in digits}) == len(digits):
        return [int(d) for d in digits]
    return list(range(1, len(voc_ids) + 1))


def records_to_coco(records: Sequence[DetRecord], class_names: Sequence[str]) -> dict:
    """COCO dict of records whose ``image_id`` is the VOC id (see the module docstring)."""
    ids = coco_image_ids([str(r.image_id) for r in records])
    images, anns = [], []
    for cid, rec in zip(ids, records):
        images.append({"id": cid, "file_name": f"{rec.image_id}.jpg", "width": rec.width, "height": rec.height,
                       "voc_id": str(rec.image_id)})
        for b, lab, diff, trunc in zip(rec.boxes, rec.labels, rec.difficult, rec.truncated):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            ann = {"id": len(anns) + 1, "image_id": cid, "category_id": int(lab),
                   "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h, "iscrowd": int(diff),
                   "truncated": int(trunc)}
            if diff:
                ann["difficult"] = 1
            anns.append(ann)
    cats = [{"id": i + 1, "name": n, "supercategory": "none"} for i, n in enumerate(class_names)]
    return {"images": images, "annotations": anns, "categories": cats}


def voc_to_coco(roots, splits, class_names: Sequence[str] = VOC_CLASSES) -> dict:
    """Read VOC image sets (annotations only) and convert them."""
    return records_to_coco(read_voc(roots, splits, class_names, check_images=False), class_names)
