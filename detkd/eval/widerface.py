"""WIDER FACE validation evaluator, bit-exact to the official protocol (EVAL.md §1).

Conventions
-----------
* Ground truth (``WiderGT``, ``load_gt``, ``save_gt``) is read by ``detkd.data.widerface`` from the four official
  MATLAB files. GT boxes are int32 ``[n, 4]`` **x, y, w, h**; keep lists are **0-based**.
* Predictions per image are float ``[n, 5]`` **x, y, w, h, score**, exactly what the standard txt files hold
  (``x = int(x1)``, ``w = int(x2) - int(x1)``, ``score = str(np.float32(s))``).
* The algorithm reproduces the Python port of the official tool plus the two MATLAB behaviours that make it
  well defined (EVAL.md §1.4): every image's boxes are sorted by score, descending and stable, before
  matching, and a missing prediction file counts as an image without detections. Everything else is the
  port: global min-max score normalisation (min starts at 1, max at 0), +1 pixel IoU, best-GT-only matching
  with ignored GT absorbing predictions, duplicates staying false positives, 1000 thresholds
  ``1 - t/1000``, count-level pooling over all images, VOC-2010 "area" AP with sentinels and ``np.maximum``.
* Degenerate case worth knowing: if every loaded score is the same value in [0, 1], the normalisation is
  0/0, every normalised score is NaN, no box passes any threshold and the AP is exactly 0.0 (the official
  code does the same). A subset without counted faces (possible with ``images=``) gives AP = NaN.
* ``WiderFaceEvaluator`` follows the ``detkd.eval.base`` protocol (``process(metas, outputs)`` with metas
  holding ``event`` and ``name``) and is registered as the evaluator ``"widerface"``.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from detkd.data.widerface_gt import SUBSETS, WiderGT, load_gt
from detkd.eval.ap import voc_ap
from detkd.eval.base import DatasetEvaluator
from detkd.registry import register

NUM_THRESHOLDS = 1000
IOU_THRESHOLD = 0.5

# ----------------------------------------------------------------------------------------------------------
# Prediction files
# ----------------------------------------------------------------------------------------------------------
def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _split_dets(boxes_xyxy, scores) -> tuple[np.ndarray, np.ndarray]:
    boxes = _numpy(boxes_xyxy)
    if scores is None:
        if boxes.ndim != 2 or boxes.shape[1] < 5:
            raise ValueError(f"dets must be [n, 5] x1,y1,x2,y2,score when scores is None, got {boxes.shape}")
        boxes, scores = boxes[:, :4], boxes[:, 4]
    scores = _numpy(scores).reshape(-1)
    boxes = boxes.reshape(-1, 4) if boxes.size else np.zeros((0, 4), dtype=np.float32)
    if len(boxes) != len(scores):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError("boxes and scores must be finite")
    return boxes, scores.astype(np.float32)


def dets_to_xywhs(boxes_xyxy, scores=None) -> np.ndarray:
    """float64 [n, 5] x, y, w, h, score exactly as ``write_txt`` + ``read_pred_dir`` would give them.

    ``boxes_xyxy`` [n, 4] (or [n, 5] with the score when ``scores`` is None); numpy or torch.
    Coordinates are truncated toward zero (``int()``), ``w = int(x2) - int(x1)``; the score goes through
    ``str(np.float32(s))`` and back, as on disk.
    """
    boxes, scores = _split_dets(boxes_xyxy, scores)
    t = np.trunc(boxes.astype(np.float64))                            # [n, 4]
    out = np.empty((len(boxes), 5), dtype=np.float64)
    out[:, 0:2] = t[:, 0:2]
    out[:, 2:4] = t[:, 2:4] - t[:, 0:2]
    out[:, 4] = scores.astype(str).astype(np.float64)                 # shortest float32 repr, re-parsed
    return out


def write_txt(pred_dir: str | Path, event: str, name: str, boxes_xyxy, scores=None) -> Path:
    """Write ``pred_dir/event/name.txt`` in the Pytorch_Retinaface / TDKD layout (EVAL.md §1.2).

    Lines: name, count, then ``x y w h score `` per box in the given order (the writer does not sort).
    """
    boxes, scores = _split_dets(boxes_xyxy, scores)
    path = Path(pred_dir) / event / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{name}\n", f"{len(boxes)}\n"]
    for b, s in zip(boxes.tolist(), scores):
        x, y = int(b[0]), int(b[1])
        lines.append(f"{x} {y} {int(b[2]) - x} {int(b[3]) - y} {str(s)} \n")   # str(np.float32)
    path.write_text("".join(lines))
    return path


def _read_pred_file(path: Path) -> tuple[str, np.ndarray]:
    lines = path.read_text().splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}:1: empty prediction file (line 1 must be the image name)")
    name = lines[0].strip().split("/")[-1].removesuffix(".jpg")
    if len(lines) > 1:
        try:
            int(lines[1].strip())
        except ValueError:
            raise ValueError(f"{path}:2: expected the box count, got {lines[1]!r}") from None
    rows = []
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 5:
            raise ValueError(f"{path}:{lineno}: expected 'x y w h score', got {line!r}")
        try:
            rows.append([float(v) for v in fields[:5]])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: non-numeric field in {line!r}") from None
    return name, np.asarray(rows, dtype=np.float64).reshape(-1, 5)


def read_pred_dir(pred_dir: str | Path) -> dict[tuple[str, str], np.ndarray]:
    """Read every ``pred_dir/<event>/*.txt``; key (event dir name, image name from line 1) -> float64 [n, 5].

    Line 2 (the count) is checked to be an integer but, as in the Python port, every following non-empty
    line is read and only its first five fields are used (so trailing spaces / landmarks are fine).
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"prediction directory not found: {pred_dir}")
    preds: dict[tuple[str, str], np.ndarray] = {}
    for event_dir in sorted(p for p in pred_dir.iterdir() if p.is_dir()):
        for path in sorted(event_dir.glob("*.txt")):
            name, dets = _read_pred_file(path)
            key = (event_dir.name, name)
            if key in preds:
                raise ValueError(f"{path}:1: image {name!r} appears in two files of {event_dir}")
            preds[key] = dets
    return preds


# ----------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------
def iou_plus1(pred_xyxy: np.ndarray, gt_xyxy: np.ndarray) -> np.ndarray:
    """[n, m] IoU with the +1 pixel convention, same float ops as the official ``bbox_overlaps``."""
    p = pred_xyxy[:, None, :]                                        # [n, 1, 4]
    g = gt_xyxy[None, :, :]                                          # [1, m, 4]
    iw = np.minimum(p[..., 2], g[..., 2]) - np.maximum(p[..., 0], g[..., 0]) + 1   # [n, m]
    ih = np.minimum(p[..., 3], g[..., 3]) - np.maximum(p[..., 1], g[..., 1]) + 1
    valid = (iw > 0) & (ih > 0)
    inter = iw * ih
    area_p = (p[..., 2] - p[..., 0] + 1) * (p[..., 3] - p[..., 1] + 1)            # [n, 1]
    area_g = (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)            # [1, m]
    ua = area_p + area_g - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(valid, inter / np.where(valid, ua, 1.0), 0.0)


class WiderFaceEvaluator(DatasetEvaluator):
    """WIDER FACE evaluator (``detkd.eval.base`` protocol) over the val GT (or a subset of its images).

    ``process(metas, outputs)``: each meta names the image (``event`` and ``name``, as ``WiderFaceVal`` gives
    them), each output holds ``boxes`` [n, 4] xyxy original-image pixels and ``scores`` [n]; they become the
    [n, 5] x, y, w, h, score rows the standard txt file would give back (``dets_to_xywhs``). ``add(event, name,
    dets)`` records one image's rows directly (as read from a prediction directory).
    ``images``: optional iterable of (event, name); counts and AP then cover only those images.
    ``pred_dir``: also write each processed image's txt file there (``write_txt``; every rank writes its own).
    After ``evaluate()`` (on rank 0), ``self.curves[subset] = (recall [T], precision [T])`` over thresholds
    0.999 .. 0.000 (precision is NaN where no box passes the threshold).
    """

    def __init__(self, gt: WiderGT, images: Iterable[tuple[str, str]] | None = None,
                 pred_dir: str | Path | None = None) -> None:
        super().__init__()
        self.gt = gt
        if images is None:
            self.selected = np.arange(len(gt.images))
        else:
            self.selected = np.array(sorted({gt.index(e, n) for e, n in images}), dtype=np.int64)
        self._selected_set = set(self.selected.tolist())
        self.pred_dir = None if pred_dir is None else Path(pred_dir)
        self.thresholds = 1 - np.arange(1, NUM_THRESHOLDS + 1) / NUM_THRESHOLDS   # [T] 0.999 .. 0.0
        self.curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._seen: set[int] = set()
        self.curves = {}

    def record(self, meta: dict, output: Any) -> tuple[int, np.ndarray] | None:
        try:
            event, name = meta["event"], meta["name"]
        except KeyError as e:
            raise KeyError(f"WIDER evaluation: image meta has no {e.args[0]!r} (keys: {sorted(meta)})") from None
        if self.pred_dir is not None:
            write_txt(self.pred_dir, event, name, output["boxes"], output["scores"])
        return self._check(event, name, dets_to_xywhs(output["boxes"], output["scores"]))

    def add(self, event: str, name: str, dets) -> None:
        """Record one image's detections: float [n, 5] x, y, w, h, score (e.g. from ``dets_to_xywhs``).

        Images outside ``images=`` are ignored; an image given twice is an error.
        """
        rec = self._check(event, name, dets)
        if rec is not None:
            self._records.append(rec)

    def _check(self, event: str, name: str, dets) -> tuple[int, np.ndarray] | None:
        i = self.gt.index(event, name)
        if i not in self._selected_set:
            return None
        d = _numpy(dets).astype(np.float64)
        if d.size == 0:
            d = d.reshape(0, 5)
        if d.ndim != 2 or d.shape[1] < 5:
            raise ValueError(f"{event}/{name}: dets must be [n, 5] x,y,w,h,score, got shape {d.shape}")
        if not np.isfinite(d[:, :5]).all():
            raise ValueError(f"{event}/{name}: dets contain NaN or inf")
        if i in self._seen:
            raise ValueError(f"{event}/{name}: detections given twice")
        self._seen.add(i)
        return i, d[:, :5]

    def save_plots(self, plot_dir: str | Path, title: str) -> Path:
        """``pr_curves.png`` and ``pr_curves.npz`` (``<subset>_rec``, ``<subset>_prec``) of the last
        ``evaluate()`` in ``plot_dir``; returns the PNG path."""
        from detkd.eval.plots import plot_pr_curves

        plot_dir = Path(plot_dir)
        plot_dir.mkdir(parents=True, exist_ok=True)
        np.savez(plot_dir / "pr_curves.npz", **{f"{k}_{j}": v for k, c in self.curves.items()
                                                for j, v in zip(("rec", "prec"), c)})
        return plot_pr_curves(self.curves, plot_dir / "pr_curves.png", title=title)

    def _normalised(self, preds: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Sort each image by score (descending, stable) and apply the global min-max normalisation."""
        lo, hi = 1.0, 0.0
        for d in preds.values():
            if len(d):
                lo, hi = min(lo, float(d[:, 4].min())), max(hi, float(d[:, 4].max()))
        out = {}
        with np.errstate(divide="ignore", invalid="ignore"):
            for i, d in preds.items():
                if len(d):
                    d = d[np.argsort(-d[:, 4], kind="stable")]
                    d = np.concatenate([d[:, :4], ((d[:, 4] - lo) / (hi - lo))[:, None]], axis=1)
                out[i] = d
        return out

    def _n_pass(self, scores: np.ndarray) -> np.ndarray:
        """[T] r_t + 1, the official "last index with score >= theta_t" plus one (0 where none)."""
        if not np.isnan(scores).any():   # sorted descending: the boxes above theta are a prefix
            return len(scores) - np.searchsorted(scores[::-1], self.thresholds, side="left")
        ge = scores[None, :] >= self.thresholds[:, None]               # [T, n]; NaN passes nothing
        return np.where(ge.any(axis=1), len(scores) - ge[:, ::-1].argmax(axis=1), 0)

    def compute(self, records: list[tuple[int, np.ndarray]]) -> dict[str, float]:
        """easy / medium / hard AP from every rank's ``(GT index, [n, 5] dets)`` records."""
        raw: dict[int, np.ndarray] = {}
        for i, d in records:
            if i in raw:
                event, name = self.gt.images[i]
                raise ValueError(f"{event}/{name}: detections given twice (by two ranks?)")
            raw[i] = d
        missing = len(self.selected) - len(raw)
        if missing:
            warnings.warn(f"WIDER evaluation: {missing} of {len(self.selected)} images have no prediction; "
                          "treated as images without detections", stacklevel=2)
        preds = self._normalised(raw)
        T = NUM_THRESHOLDS
        pr = {s: np.zeros((T, 2), dtype=np.float64) for s in SUBSETS}   # [T, (proposals, recalled)]
        count = {s: 0 for s in SUBSETS}
        for i in self.selected.tolist():
            gt_boxes = self.gt.boxes[i]
            for s in SUBSETS:
                count[s] += len(self.gt.keep[s][i])
            d = preds.get(i)
            if d is None or len(d) == 0 or len(gt_boxes) == 0:
                continue
            p = d[:, :4].copy()
            p[:, 2:] += p[:, :2]                                        # [n, 4] xyxy (no -1)
            g = gt_boxes.astype(np.float64)
            g[:, 2:] += g[:, :2]                                        # [m, 4]
            iou = iou_plus1(p, g)                                       # [n, m]
            best = iou.argmax(axis=1)                                   # [n] first index on ties
            hit = iou[np.arange(len(best)), best] >= IOU_THRESHOLD      # [n]
            # r_t + 1 = number of boxes with score >= theta_t (scores are sorted descending)
            n_pass = self._n_pass(d[:, 4])                               # [T]
            for s in SUBSETS:
                counted = np.zeros(len(gt_boxes), dtype=bool)
                counted[self.gt.keep[s][i]] = True
                on_counted = hit & counted[best]
                is_prop = ~(hit & ~counted[best])                       # ignored best GT absorbs the box
                first = np.zeros(len(d), dtype=np.int64)
                _, first_idx = np.unique(np.where(on_counted, best, -1), return_index=True)
                first[first_idx[on_counted[first_idx]]] = 1             # first box on each counted GT
                cum_prop = np.concatenate(([0], np.cumsum(is_prop)))    # [n + 1]
                cum_rec = np.concatenate(([0], np.cumsum(first)))
                pr[s][:, 0] += cum_prop[n_pass]
                pr[s][:, 1] += cum_rec[n_pass]
        results = {}
        with np.errstate(divide="ignore", invalid="ignore"):
            for s in SUBSETS:
                prec = pr[s][:, 1] / pr[s][:, 0]
                rec = pr[s][:, 1] / count[s]
                self.curves[s] = (rec, prec)
                results[s] = voc_ap(rec, prec)
        return results


def evaluate_dir(pred_dir: str | Path, gt_dir: str | Path, plot_dir: str | Path | None = None) -> dict:
    """Evaluate a standard prediction directory against the GT files in ``gt_dir``.

    Predictions for images that are not in the GT are ignored (with a warning). ``plot_dir``: write
    ``pr_curves.png`` there.
    """
    gt = load_gt(gt_dir)
    evaluator = WiderFaceEvaluator(gt)
    unknown = 0
    for (event, name), dets in read_pred_dir(pred_dir).items():
        try:
            gt.index(event, name)
        except KeyError:
            unknown += 1
            continue
        evaluator.add(event, name, dets)
    if unknown:
        warnings.warn(f"{pred_dir}: {unknown} prediction files name images that are not in the WIDER GT; "
                      "ignored", stacklevel=2)
    results = evaluator.evaluate()
    if plot_dir is not None:
        evaluator.save_plots(plot_dir, "WIDER FACE val  " + "  ".join(f"{s} {results[s]:.4f}" for s in SUBSETS))
    return results


@register("evaluator")
def widerface(*, dataset=None, gt_dir: str | Path | None = None, images: Iterable[tuple[str, str]] | None = None,
              pred_dir: str | Path | None = None, max_images: int = 0) -> WiderFaceEvaluator:
    """WIDER FACE easy / medium / hard AP. The GT comes from ``dataset.gt`` (a ``WiderFaceVal``) or ``gt_dir``;
    ``max_images > 0`` restricts the counts to the first N GT images (smoke runs)."""
    if dataset is not None and getattr(dataset, "gt", None) is not None:
        gt = dataset.gt
    elif gt_dir is not None:
        gt = load_gt(gt_dir)
    else:
        raise ValueError("widerface evaluator: give dataset= (a WIDER val set) or gt_dir=")
    if images is None and max_images > 0:
        images = gt.images[:max_images]
    return WiderFaceEvaluator(gt, images=images, pred_dir=pred_dir)
