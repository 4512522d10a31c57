"""PASCAL VOC detection mAP (EVAL.md §2.1), vectorised, equal to py-faster-rcnn's ``voc_eval.py``.

Conventions
-----------
* Everything here works in **VOC pixels**: 1-based inclusive ``xmin, ymin, xmax, ymax``, as in the XML files
  and in the VOC results files (see :mod:`detkd.data.voc_gt` for the exact map from detkd's continuous xyxy).
  IoU uses the "+1" convention: ``iw = max(min(x2, x2') - max(x1, x1') + 1, 0)``, areas ``(x2-x1+1)(y2-y1+1)``.
* Per class: detections of all images are sorted by score, descending (stable, so equal scores keep input
  order; py-faster-rcnn's unstable quicksort may order ties differently: results are identical whenever
  no two detections of a class share a score). Each detection is compared with **every** GT of its class in
  its image, difficult ones included, and only the best-IoU GT (first on ties) counts: above the threshold it
  is ignored if that GT is difficult, a TP if the GT is still free, else a FP (duplicate); below, a FP.
* ``iou_compare="devkit"``: IoU >= thr (MATLAB devkit, mmdet; default). ``"strict"``: IoU > thr (py-faster-rcnn).
* ``metric="voc07"``: 11-point AP at ``np.arange(0., 1.1, 0.1)`` (so 0.3, 0.6, 0.7 are 0.30000000000000004 …,
  reproduced on purpose). ``"area"``: all-point AP (VOC2010+).
* ``iou_thrs`` with several values (``0.5:0.95`` = ten thresholds, LD's VOC table) averages the mAP over them.
* A class without non-difficult GT gets AP 0 and is named in ``no_gt``; a class without any detection gets AP 0
  (``no_detections``). mAP is the mean over all classes.

Results directory: one file per class, ``<class>.txt`` or ``comp4_det_<split>_<class>.txt``, lines
``image_id score xmin ymin xmax ymax``. A missing file means no detections for that class.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from detkd.data.voc_gt import VOC_CLASSES, read_voc, to_voc_pixels
from detkd.eval.ap import voc_ap as area_ap
from detkd.eval.base import DatasetEvaluator
from detkd.registry import register

METRICS = ("voc07", "area")
IOU_COMPARES = ("devkit", "strict")


@dataclass
class VOCGroundTruth:
    """Per image (in image-set order): ``boxes [n,4]`` float64 VOC pixels, ``labels [n]`` 0-based class index,
    ``difficult [n]`` bool."""

    image_ids: list[str]
    class_names: tuple[str, ...]
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    difficult: list[np.ndarray]
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        self.index = {str(i): k for k, i in enumerate(self.image_ids)}
        if len(self.index) != len(self.image_ids):
            raise ValueError("VOC ground truth: an image id is listed twice")

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All GT concatenated in image order: ``(boxes [G,4] float64, labels [G], difficult [G], image [G])``."""
        if getattr(self, "_flat", None) is None:
            n = [len(lab) for lab in self.labels]
            if not n:
                self._flat = (np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int64))
            else:
                self._flat = (np.concatenate(self.boxes).reshape(-1, 4).astype(np.float64),
                              np.concatenate(self.labels).astype(np.int64),
                              np.concatenate(self.difficult).astype(bool),
                              np.repeat(np.arange(len(n)), n).astype(np.int64))
        return self._flat

    @classmethod
    def from_records(cls, records, class_names: Sequence[str] = VOC_CLASSES) -> "VOCGroundTruth":
        """From :class:`detkd.data.detection.DetRecord` s (labels 1..K); crowd regions, if any, count as difficult."""
        return cls([str(r.image_id) for r in records], tuple(class_names), [to_voc_pixels(r.boxes) for r in records],
                   [r.labels - 1 for r in records], [r.difficult | r.crowd for r in records])

    @classmethod
    def load(cls, roots, splits, class_names: Sequence[str] = VOC_CLASSES) -> "VOCGroundTruth":
        """GT of one or several ``(root, split)`` image sets (annotations only; images need not exist)."""
        return cls.from_records(read_voc(roots, splits, class_names, check_images=False), class_names)


@dataclass
class ClassDetections:
    """Detections of one class: ``image [n]`` index into ``VOCGroundTruth.image_ids``, ``scores [n]``,
    ``boxes [n,4]`` VOC pixels."""

    image: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray

    @classmethod
    def empty(cls) -> "ClassDetections":
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)))


def iou_plus1(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Elementwise "+1" IoU of ``det [..., 4]`` and ``gt [..., 4]`` (broadcast), in py-faster-rcnn's operation
    order so that values are bit-identical to it."""
    ixmin = np.maximum(gt[..., 0], det[..., 0])
    iymin = np.maximum(gt[..., 1], det[..., 1])
    ixmax = np.minimum(gt[..., 2], det[..., 2])
    iymax = np.minimum(gt[..., 3], det[..., 3])
    iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
    ih = np.maximum(iymax - iymin + 1.0, 0.0)
    inters = iw * ih
    uni = ((det[..., 2] - det[..., 0] + 1.0) * (det[..., 3] - det[..., 1] + 1.0)
           + (gt[..., 2] - gt[..., 0] + 1.0) * (gt[..., 3] - gt[..., 1] + 1.0) - inters)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inters / uni


def voc_ap(rec: np.ndarray, prec: np.ndarray, metric: str = "voc07") -> float:
    """AP from the cumulative recall/precision arrays (EVAL.md §2.1 steps 5–6)."""
    if metric == "voc07":
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            hit = rec >= t
            p = 0.0 if np.sum(hit) == 0 else np.max(prec[hit])
            ap = ap + p / 11.0
        return float(ap)
    if metric != "area":
        raise ValueError(f"unknown VOC metric {metric!r}; choose from {', '.join(METRICS)}")
    return area_ap(rec, prec)


def _class_gt(gt: VOCGroundTruth, c: int):
    """GT of class ``c`` grouped by image, in file order: ``(boxes [G,4], difficult [G], start [I], count [I])``
    (image ``i``'s boxes are ``boxes[start[i] : start[i] + count[i]]``)."""
    boxes, labels, difficult, image = gt.flat()
    m = labels == c
    count = np.bincount(image[m], minlength=len(gt.image_ids)).astype(np.int64)
    start = np.concatenate(([0], np.cumsum(count)[:-1])).astype(np.int64)
    return boxes[m], difficult[m], start, count


def match_class(gt: VOCGroundTruth, c: int, dets: ClassDetections, iou_thrs: Sequence[float],
                iou_compare: str = "devkit") -> tuple[int, list[tuple[np.ndarray, np.ndarray]]]:
    """``(npos, [(tp [n], fp [n]) per threshold])`` in descending-score order (0/1 float arrays)."""
    if iou_compare not in IOU_COMPARES:
        raise ValueError(f"unknown IoU comparison {iou_compare!r}; choose from {', '.join(IOU_COMPARES)}")
    gboxes, gdiff, start, count = _class_gt(gt, c)
    npos = int((~gdiff).sum())
    order = np.argsort(-dets.scores, kind="stable")
    img, boxes = dets.image[order], dets.boxes[order].astype(np.float64)
    n = len(order)
    if n == 0:
        return npos, [(np.zeros(0), np.zeros(0)) for _ in iou_thrs]
    # every (detection, GT of its image) pair, detection-major and GT in file order within a detection
    rep = count[img]
    pair_det = np.repeat(np.arange(n), rep)
    first_pair = np.cumsum(rep) - rep  # index of each detection's first pair
    pair_gt = start[img][pair_det] + (np.arange(len(pair_det)) - first_pair[pair_det])
    ov = iou_plus1(boxes[pair_det], gboxes[pair_gt])
    ovmax, gbest = np.full(n, -np.inf), np.zeros(n, np.int64)
    has = rep > 0
    if has.any():
        best = np.maximum.reduceat(ov, first_pair[has])  # per detection with GT (NaN propagates, as np.max)
        hit = np.flatnonzero(ov == np.repeat(best, rep[has]))  # the first maximal pair = np.argmax's choice
        d = pair_det[hit]  # ascending (pairs are detection-major): keep each detection's first maximal pair
        first = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])
        dets_hit = d[first]
        ovmax[dets_hit] = ov[hit[first]]
        gbest[dets_hit] = pair_gt[hit[first]]
    best_difficult = gdiff[gbest] & (ovmax > -np.inf) if len(gdiff) else np.zeros(n, bool)
    out = []
    for thr in iou_thrs:
        passed = ovmax >= thr if iou_compare == "devkit" else ovmax > thr
        candidate = np.flatnonzero(passed & ~best_difficult)
        _, first = np.unique(gbest[candidate], return_index=True)
        tp = np.zeros(n)
        tp[candidate[first]] = 1.0
        fp = np.where(passed, 0.0, 1.0)
        fp[candidate] = 1.0
        fp[candidate[first]] = 0.0
        out.append((tp, fp))
    return npos, out


def class_ap(npos: int, tp: np.ndarray, fp: np.ndarray, metric: str) -> float:
    """AP of one class from its score-ordered TP/FP flags (py-faster-rcnn's cumsum / eps formula)."""
    if npos == 0:
        return 0.0
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, metric)


def evaluate_detections(gt: VOCGroundTruth, dets: Sequence[ClassDetections], metric: str = "voc07",
                        iou_compare: str = "devkit", iou_thrs: Sequence[float] = (0.5,)) -> dict:
    """``{"metric", "mAP", "per_class": {name: AP}, "iou_thrs", "no_gt", "no_detections"}``; with several
    thresholds ``mAP`` / ``per_class`` are means over them and ``mAP_per_iou`` lists each threshold's mAP."""
    if metric not in METRICS:
        raise ValueError(f"unknown VOC metric {metric!r}; choose from {', '.join(METRICS)}")
    if len(dets) != len(gt.class_names):
        raise ValueError(f"{len(dets)} detection lists for {len(gt.class_names)} classes")
    thrs = [float(t) for t in iou_thrs]
    aps = np.zeros((len(thrs), len(gt.class_names)))
    no_gt, no_dets = [], []
    for c, name in enumerate(gt.class_names):
        npos, flags = match_class(gt, c, dets[c], thrs, iou_compare)
        if npos == 0:
            no_gt.append(name)
        if len(dets[c].scores) == 0:
            no_dets.append(name)
        for t, (tp, fp) in enumerate(flags):
            aps[t, c] = class_ap(npos, tp, fp, metric)
    per_class = aps.mean(axis=0)
    result = {"metric": metric, "mAP": float(np.mean(per_class)),
              "per_class": {n: float(a) for n, a in zip(gt.class_names, per_class)},
              "iou_thrs": thrs, "iou_compare": iou_compare, "no_gt": no_gt, "no_detections": no_dets}
    if len(thrs) > 1:
        result["mAP_per_iou"] = [float(m) for m in aps.mean(axis=1)]
    return result


# ------------------------------------------------------------------------------------------- result files


def _class_of_file(name: str, split: str | None, class_names: Sequence[str]) -> str | None:
    stem = name[:-4]
    m = re.fullmatch(r"comp\d+_det_(.+?)_(.+)", stem)
    if m and (split is None or m.group(1) == split):
        stem = m.group(2)
    return stem if stem in class_names else None


def result_files(pred_dir: str | Path, class_names: Sequence[str], split: str | None = None) -> dict[str, Path]:
    """``{class: file}`` for ``<class>.txt`` / ``comp<N>_det_<split>_<class>.txt``. Any other ``.txt`` file,
    or two files for one class, raises ``ValueError`` naming them."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction directory not found: {pred_dir}")
    found: dict[str, Path] = {}
    for p in sorted(pred_dir.glob("*.txt")):
        c = _class_of_file(p.name, split, class_names)
        if c is None:
            raise ValueError(f"{p}: not a results file of a known class (expected <class>.txt or "
                             f"comp4_det_{split or '<split>'}_<class>.txt; classes: {', '.join(class_names)})")
        if c in found:
            raise ValueError(f"two results files for class {c!r}: {found[c]} and {p}")
        found[c] = p
    return found


def read_result_file(path: str | Path, image_index: dict[str, int]) -> ClassDetections:
    """Parse ``image_id score xmin ymin xmax ymax`` lines (blank lines skipped). Raises ``ValueError`` naming
    ``file:line`` for a malformed line, a non-finite number or an image id outside ``image_index``.

    Fast path: numpy's C ``loadtxt`` (exactly 6 columns per line, ids looked up vectorised); anything it
    rejects (a bad line, an unknown id, a non-finite number) goes through the line-by-line reader, which
    finds and names the bad line."""
    path = Path(path)
    text = path.read_text()
    if not text.strip():
        return ClassDetections.empty()
    known, order = _sorted_ids(image_index)
    width = known.dtype.itemsize // 4 + 1  # a longer token is cut to this and then matches no id
    try:
        table = np.loadtxt(io.StringIO(text), dtype=[("id", f"U{width}"), ("v", "f8", (5,))], comments=None,
                           ndmin=1)
        pos = np.minimum(np.searchsorted(known, table["id"]), len(known) - 1)
        values = table["v"]
        if len(known) and (known[pos] == table["id"]).all() and np.isfinite(values).all():
            return ClassDetections(order[pos], values[:, 0].copy(), np.ascontiguousarray(values[:, 1:]))
    except ValueError:
        pass
    return _read_result_lines(path, text, image_index)


_ID_CACHE: dict[int, tuple[dict, np.ndarray, np.ndarray]] = {}


def _sorted_ids(image_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted ids [I] (str array), their indices [I])`` for vectorised id lookup (cached per index dict)."""
    hit = _ID_CACHE.get(id(image_index))
    if hit is None or hit[0] is not image_index:
        keys = sorted(image_index)
        hit = (image_index, np.array(keys, dtype=str), np.array([image_index[k] for k in keys], np.int64))
        _ID_CACHE.clear()
        _ID_CACHE[id(image_index)] = hit
    return hit[1], hit[2]


def _read_result_lines(path: Path, text: str, image_index: dict[str, int]) -> ClassDetections:
    ids, nums = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        r = line.split()
        if not r:
            continue
        if len(r) != 6:
            raise ValueError(f"{path}:{lineno}: expected 'image_id score xmin ymin xmax ymax', got {line.strip()!r}")
        if r[0] not in image_index:
            raise ValueError(f"{path}:{lineno}: image id {r[0]!r} is not in the evaluated image set")
        try:
            v = [float(t) for t in r[1:]]
        except ValueError:
            raise ValueError(f"{path}:{lineno}: non-numeric value in {line.strip()!r}") from None
        if not np.isfinite(v).all():
            raise ValueError(f"{path}:{lineno}: non-finite number in {line.strip()!r}")
        ids.append(image_index[r[0]])
        nums.append(v)
    values = np.array(nums, np.float64).reshape(-1, 5)
    return ClassDetections(np.array(ids, np.int64), values[:, 0].copy(), np.ascontiguousarray(values[:, 1:]))


def evaluate_dir(pred_dir: str | Path, gt: VOCGroundTruth, split: str | None = None, metric: str = "voc07",
                 iou_compare: str = "devkit", iou_thrs: Sequence[float] = (0.5,)) -> dict:
    """Score a VOC results directory against ``gt``; the result also lists ``missing_files`` (classes
    scored AP 0 because their file is absent)."""
    files = result_files(pred_dir, gt.class_names, split)
    dets = [read_result_file(files[c], gt.index) if c in files else ClassDetections.empty()
            for c in gt.class_names]
    result = evaluate_detections(gt, dets, metric, iou_compare, iou_thrs)
    result["missing_files"] = [c for c in gt.class_names if c not in files]
    return result


def _fmt(v: float) -> str:
    return repr(float(v))  # shortest repr that reads back as the same float64


def write_voc_results(pred_dir: str | Path, image_ids: Sequence[str], outputs: Sequence[dict],
                      class_names: Sequence[str] = VOC_CLASSES, prefix: str = "") -> list[Path]:
    """Write one ``<prefix><class>.txt`` per class (every class, empty when it has no detection).

    ``outputs[i]``: ``{"boxes" [n,4] detkd xyxy in original image pixels, "scores" [n], "labels" [n] 1..K}``
    (tensors or arrays) for image ``image_ids[i]``. Boxes are written in VOC pixels (``xmin = x1 + 1``,
    ``xmax = x2``) and every number as the shortest repr of its float64 value, so reading the file back gives
    the exact values.
    """
    pred_dir = Path(pred_dir)
    pred_dir.mkdir(parents=True, exist_ok=True)
    lines: list[list[str]] = [[] for _ in class_names]
    for image_id, out in zip(image_ids, outputs):
        boxes = to_voc_pixels(np.asarray(out["boxes"], np.float64))
        scores = np.asarray(out["scores"], np.float64).reshape(-1)
        labels = np.asarray(out["labels"], np.int64).reshape(-1)
        if len(boxes) and (labels.min() < 1 or labels.max() > len(class_names)):
            raise ValueError(f"image {image_id}: label outside 1..{len(class_names)} in {labels.tolist()}")
        for b, s, lab in zip(boxes, scores, labels):
            lines[lab - 1].append(f"{image_id} {_fmt(s)} " + " ".join(_fmt(v) for v in b))
    paths = []
    for name, ls in zip(class_names, lines):
        p = pred_dir / f"{prefix}{name}.txt"
        p.write_text("".join(line + "\n" for line in ls))
        paths.append(p)
    return paths


class VOCEvaluator(DatasetEvaluator):
    """``reset() / process(metas, outputs) / evaluate() -> {"mAP": m, "AP/<class>": ap, ...}`` (flat floats, as
    the trainer logs them; with several IoU thresholds also ``"mAP@<thr>"``) over model outputs
    (``detkd.eval.base``). :meth:`details` gives the full :func:`evaluate_detections` dict.

    ``metas[i]["image_id"]`` names the image (an id of ``gt``); ``outputs[i]`` holds ``boxes`` (detkd xyxy in
    **original image** pixels), ``scores`` and ``labels`` (1..K). Boxes go through the same VOC-pixel
    conversion as :func:`write_voc_results`, so evaluating in memory equals writing files and reading them.
    Under DDP each rank processes its shard; ``evaluate()`` returns the metrics on rank 0 (``{}`` elsewhere).
    """

    def __init__(self, gt: VOCGroundTruth, metric: str = "voc07", iou_compare: str = "devkit",
                 iou_thrs: Sequence[float] = (0.5,)):
        super().__init__()
        if metric not in METRICS or iou_compare not in IOU_COMPARES:
            raise ValueError(f"VOCEvaluator: metric must be one of {METRICS} and iou_compare one of "
                             f"{IOU_COMPARES}, got {metric!r}, {iou_compare!r}")
        self.gt, self.metric, self.iou_compare, self.iou_thrs = gt, metric, iou_compare, tuple(iou_thrs)

    def record(self, meta: dict, output: dict):
        key = str(meta["image_id"])
        if key not in self.gt.index:
            raise ValueError(f"VOCEvaluator: image id {key!r} is not in the ground truth")
        boxes = to_voc_pixels(np.asarray(output["boxes"], np.float64))
        scores = np.asarray(output["scores"], np.float64).reshape(-1)
        labels = np.asarray(output["labels"], np.int64).reshape(-1)
        if len(labels) and (labels.min() < 1 or labels.max() > len(self.gt.class_names)):
            raise ValueError(f"VOCEvaluator: image {key}: label outside 1..{len(self.gt.class_names)} "
                             f"in {labels.tolist()}")
        return self.gt.index[key], boxes, scores, labels

    def compute(self, records: list) -> dict:
        return flat_metrics(self.details(records))

    def details(self, records: list | None = None) -> dict:
        """The :func:`evaluate_detections` dict of ``records`` (default: what this rank processed)."""
        records = self._records if records is None else records
        k = len(self.gt.class_names)
        if not records:
            return evaluate_detections(self.gt, [ClassDetections.empty() for _ in range(k)], self.metric,
                                       self.iou_compare, self.iou_thrs)
        image = np.concatenate([np.full(len(r[3]), r[0], np.int64) for r in records])
        boxes = np.concatenate([r[1] for r in records]).reshape(-1, 4)
        scores = np.concatenate([r[2] for r in records])
        labels = np.concatenate([r[3] for r in records])
        dets = [ClassDetections(image[labels == c], scores[labels == c], boxes[labels == c]) for c in range(1, k + 1)]
        return evaluate_detections(self.gt, dets, self.metric, self.iou_compare, self.iou_thrs)


def flat_metrics(res: dict) -> dict[str, float]:
    """``{"mAP", "AP/<class>"[, "mAP@<thr>"]}`` floats from an :func:`evaluate_detections` dict."""
    out = {"mAP": res["mAP"], **{f"AP/{c}": v for c, v in res["per_class"].items()}}
    for t, m in zip(res["iou_thrs"], res.get("mAP_per_iou", [])):
        out[f"mAP@{t:.2f}"] = m
    return out


@register("evaluator")
def voc(*, dataset=None, roots=None, splits=None, class_names: Sequence[str] | None = None,
        metric: str = "voc07", iou_compare: str = "devkit", iou_thrs: Sequence[float] = (0.5,),
        max_images: int = 0) -> VOCEvaluator:
    """PASCAL VOC mAP. The GT comes from ``dataset.records`` (a VOC-layout evaluation set: the ``val`` split of
    the ``voc`` / ``synthshapes`` datasets) or from ``roots`` + ``splits``; ``max_images > 0`` keeps only the
    first N images' GT (smoke runs that evaluate the first N images)."""
    if dataset is not None and getattr(dataset, "records", None) is not None:
        names = tuple(class_names or getattr(dataset, "class_names", None) or VOC_CLASSES)
        records = dataset.records[:max_images] if max_images > 0 else dataset.records
        gt = VOCGroundTruth.from_records(records, names)
    elif roots is not None and splits is not None:
        gt = VOCGroundTruth.load(roots, splits, tuple(class_names or VOC_CLASSES))
        if max_images > 0:
            gt = VOCGroundTruth(gt.image_ids[:max_images], gt.class_names, gt.boxes[:max_images],
                                gt.labels[:max_images], gt.difficult[:max_images])
    else:
        raise ValueError("voc evaluator: give dataset= (a VOC-layout data set) or roots= and splits=")
    return VOCEvaluator(gt, metric, iou_compare, iou_thrs)


def parse_iou_thrs(text: str) -> tuple[float, ...]:
    """``"0.5"`` -> (0.5,); ``"0.5:0.95"`` -> the ten COCO thresholds ``linspace(0.5, 0.95, 10)``;
    ``"0.5,0.75"`` -> (0.5, 0.75)."""
    text = text.strip()
    if text == "0.5:0.95":
        return tuple(float(t) for t in np.linspace(0.5, 0.95, 10))
    try:
        thrs = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise ValueError(f"--iou-thrs: expected 0.5, 0.5:0.95 or a comma list, got {text!r}") from None
    if not all(0 < t < 1 for t in thrs):
        raise ValueError(f"--iou-thrs: thresholds must lie in (0, 1), got {text!r}")
    return thrs
