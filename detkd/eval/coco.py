"""COCO bbox evaluation (EVAL.md §2.2) with faster-coco-eval, and the COCO results writer.

faster-coco-eval gives the same 12 stats as pycocotools (tests/test_eval_coco.py asserts equality on a set
with crowd regions, small objects and images without GT), several times faster. Results format: a JSON list
of ``{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}`` in original image pixels.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from detkd.data.coco_gt import CocoCategories, categories_of, check_coco, load_coco_json, read_json_file
from detkd.eval.base import DatasetEvaluator
from detkd.registry import register

STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def load_results(path_or_list: str | Path | list, gt: dict) -> list[dict]:
    """Read and check a results list against the GT dict. Raises ``ValueError`` naming the file and entry for
    an unknown image id or category id, a malformed bbox or a non-finite score."""
    results, src = (path_or_list, "<results>") if isinstance(path_or_list, list) else \
        read_json_file(path_or_list, "COCO results file")
    if not isinstance(results, list):
        raise ValueError(f"{src}: a COCO results file is a JSON list of detections")
    images = {im["id"] for im in gt["images"]}
    cats = {c["id"] for c in gt["categories"]}
    for k, r in enumerate(results):
        if not isinstance(r, dict):
            raise ValueError(f"{src}: entry [{k}] is not an object")
        if r.get("image_id") not in images:
            raise ValueError(f"{src}: entry [{k}] has unknown image id {r.get('image_id')!r}")
        if r.get("category_id") not in cats:
            raise ValueError(f"{src}: entry [{k}] has unknown category id {r.get('category_id')!r}")
        bb, s = r.get("bbox"), r.get("score")
        if not (isinstance(bb, list) and len(bb) == 4 and all(isinstance(v, (int, float)) for v in bb)
                and np.isfinite(bb).all()):
            raise ValueError(f"{src}: entry [{k}] bbox is not 4 finite numbers [x, y, w, h]: {bb!r}")
        if not isinstance(s, (int, float)) or not np.isfinite(s):
            raise ValueError(f"{src}: entry [{k}] score is not a finite number: {s!r}")
    return results


def coco_stats(gt: dict, results: list[dict]) -> dict[str, float]:
    """The 12 COCOeval bbox stats (``STAT_KEYS``) of ``results`` against the GT dict (neither is modified)."""
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(copy.deepcopy(gt))
    coco_dt = coco_gt.loadRes(copy.deepcopy(results))
    ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return {k: float(v) for k, v in zip(STAT_KEYS, ev.stats[:12])}


def evaluate_files(ann_file: str | Path, pred_file: str | Path) -> dict[str, float]:
    gt, src = load_coco_json(ann_file)
    check_coco(gt, src)
    return coco_stats(gt, load_results(pred_file, gt))


def coco_results(image_ids: Sequence[int], outputs: Sequence[dict], cats: CocoCategories) -> list[dict]:
    """Model outputs -> COCO results. ``outputs[i]``: ``{"boxes" [n,4] detkd xyxy in original image pixels,
    "scores" [n], "labels" [n] 1..K}``; bbox becomes ``[x1, y1, x2 - x1, y2 - y1]``, label ``l`` category
    ``cats.cat_ids[l - 1]``."""
    out = []
    k = len(cats.cat_ids)
    for image_id, o in zip(image_ids, outputs):
        boxes = np.asarray(o["boxes"], np.float64).reshape(-1, 4)
        scores = np.asarray(o["scores"], np.float64).reshape(-1)
        labels = np.asarray(o["labels"], np.int64).reshape(-1)
        if len(labels) and (labels.min() < 1 or labels.max() > k):
            raise ValueError(f"image {image_id}: label outside 1..{k} in {labels.tolist()}")
        for b, s, lab in zip(boxes, scores, labels):
            out.append({"image_id": int(image_id), "category_id": cats.cat_ids[lab - 1],
                        "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                        "score": float(s)})
    return out


def write_coco_results(path: str | Path, image_ids, outputs, cats: CocoCategories) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco_results(image_ids, outputs, cats)))
    return path


class COCOEvaluator(DatasetEvaluator):
    """``reset() / process(metas, outputs) / evaluate() -> {STAT_KEYS}`` over model outputs (``detkd.eval.base``;
    ``metas[i]["image_id"]``: the COCO image id; outputs as in :func:`coco_results`)."""

    def __init__(self, ann_file: str | Path | dict):
        super().__init__()
        self.gt, src = load_coco_json(ann_file)
        check_coco(self.gt, src)
        self.categories = categories_of(self.gt)

    def record(self, meta: dict, output: dict) -> list[dict]:
        return coco_results([meta["image_id"]], [output], self.categories)

    def compute(self, records: list) -> dict[str, float]:
        return coco_stats(self.gt, load_results([r for rec in records for r in rec], self.gt))


@register("evaluator")
def coco(*, ann_file: str | Path | dict | None = None, dataset=None, max_images: int = 0) -> COCOEvaluator:
    """COCO bbox AP/AR (12 stats, faster-coco-eval) against ``ann_file`` or ``dataset.ann_file`` (the ``val``
    split of the ``coco`` dataset); ``max_images > 0`` keeps only the first N images of the file."""
    ann = ann_file if ann_file is not None else getattr(dataset, "ann_file", None)
    if ann is None:
        raise ValueError("coco evaluator: give ann_file= or dataset= (a COCO evaluation set)")
    if max_images > 0:
        data, _ = load_coco_json(ann)
        keep = {im["id"] for im in data["images"][:max_images]}
        ann = {**data, "images": data["images"][:max_images],
               "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
    return COCOEvaluator(ann)
