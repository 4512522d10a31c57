"""WIDER FACE validation evaluator, bit-exact to the official protocol (EVAL.md §1).

Conventions
-----------
* Ground truth comes from the four official MATLAB files (``wider_face_val.mat`` and
  ``wider_{easy,medium,hard}_val.mat``), read with plain ``scipy.io.loadmat`` (no ``squeeze_me``).
  GT boxes are int32 ``[n, 4]`` **x, y, w, h**; keep lists are stored here **0-based** (the files are 1-based).
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
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io as sio

SUBSETS = ("easy", "medium", "hard")
GT_FILES = {"val": "wider_face_val.mat", **{s: f"wider_{s}_val.mat" for s in SUBSETS}}
_CELL_KEYS = ("event_list", "file_list", "face_bbx_list")
_LABEL_KEYS = ("blur_label_list", "expression_label_list", "illumination_label_list",
               "invalid_label_list", "occlusion_label_list", "pose_label_list")
NUM_THRESHOLDS = 1000
IOU_THRESHOLD = 0.5


# ----------------------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------------------
@dataclass
class WiderGT:
    """WIDER FACE validation ground truth.

    ``events``  event names in file order, e.g. ``"0--Parade"``
    ``images``  (event, image name without ``.jpg``) in file order
    ``boxes``   per image int32 [n, 4] x, y, w, h
    ``keep``    per subset ("easy", "medium", "hard") and image: int64 [k] 0-based indices into ``boxes``
    """

    events: list[str]
    images: list[tuple[str, str]]
    boxes: list[np.ndarray]
    keep: dict[str, list[np.ndarray]]
    _index: dict[tuple[str, str], int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.boxes) != len(self.images):
            raise ValueError(f"WiderGT: {len(self.images)} images but {len(self.boxes)} box arrays")
        for s in SUBSETS:
            if len(self.keep.get(s, ())) != len(self.images):
                raise ValueError(f"WiderGT: keep[{s!r}] must hold one index array per image")
        self._index = {key: i for i, key in enumerate(self.images)}
        if len(self._index) != len(self.images):
            raise ValueError("WiderGT: duplicate (event, name) in images")

    def count_faces(self, subset: str) -> int:
        """Number of counted faces of a subset (the official ``count_face``)."""
        return int(sum(len(k) for k in self.keep[subset]))

    def index(self, event: str, name: str) -> int:
        """Position of image (event, name) in ``images``; KeyError naming it if unknown."""
        try:
            return self._index[(event, name)]
        except KeyError:
            raise KeyError(f"image {event}/{name} is not in the WIDER ground truth") from None


def _loadmat(path: Path, keys: Iterable[str]) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"WIDER ground-truth file not found: {path}")
    try:
        data = sio.loadmat(str(path))
    except Exception as e:  # scipy raises several types on corrupt files
        raise ValueError(f"{path}: cannot be read as a MATLAB 5 MAT-file ({e})") from e
    for key in keys:
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r}")
        if data[key].dtype != object:
            raise ValueError(f"{path}: key {key!r} is not a MATLAB cell array")
    return data


def _cell(arr: np.ndarray) -> list:
    """Elements of a MATLAB cell array in (column-major == file) order for (n, 1) / (1, n) / (0, 0) shapes."""
    return list(np.asarray(arr, dtype=object).ravel(order="F"))


def _string(x, path: Path, key: str) -> str:
    a = np.asarray(x).ravel()
    if a.size != 1 or a.dtype.kind != "U":
        raise ValueError(f"{path}: key {key!r} holds a non-string entry {x!r}")
    return str(a[0])


def _parse_index(data: dict, path: Path) -> tuple[list[str], list[tuple[str, str]], list[np.ndarray]]:
    events, images, boxes = [], [], []
    ev_cells, file_cells, box_cells = (_cell(data[k]) for k in _CELL_KEYS)
    if not (len(ev_cells) == len(file_cells) == len(box_cells)):
        raise ValueError(f"{path}: event_list/file_list/face_bbx_list lengths differ")
    for ev_cell, files, bbxs in zip(ev_cells, file_cells, box_cells):
        event = _string(ev_cell, path, "event_list")
        names = [_string(c, path, "file_list") for c in _cell(files)]
        bbs = _cell(bbxs)
        if len(bbs) != len(names):
            raise ValueError(f"{path}: key 'face_bbx_list' has {len(bbs)} entries for {len(names)} images "
                             f"in event {event}")
        events.append(event)
        for name, b in zip(names, bbs):
            b = np.asarray(b)
            if b.size % 4 or (b.ndim == 2 and b.size and b.shape[1] != 4):
                raise ValueError(f"{path}: key 'face_bbx_list' entry {event}/{name} has shape {b.shape}, "
                                 "expected [n, 4]")
            images.append((event, name))
            boxes.append(b.astype(np.int32).reshape(-1, 4))
    return events, images, boxes


def load_gt(gt_dir: str | Path) -> WiderGT:
    """Read ``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat`` from ``gt_dir``."""
    gt_dir = Path(gt_dir)
    val_path = gt_dir / GT_FILES["val"]
    events, images, boxes = _parse_index(_loadmat(val_path, _CELL_KEYS), val_path)
    keep: dict[str, list[np.ndarray]] = {}
    for subset in SUBSETS:
        path = gt_dir / GT_FILES[subset]
        data = _loadmat(path, ("event_list", "file_list", "gt_list"))
        sub_events = [_string(c, path, "event_list") for c in _cell(data["event_list"])]
        if sub_events != events:
            raise ValueError(f"{path}: key 'event_list' differs from {val_path.name}")
        gt_cells = _cell(data["gt_list"])
        if len(gt_cells) != len(events):
            raise ValueError(f"{path}: key 'gt_list' has {len(gt_cells)} events, expected {len(events)}")
        lists = []
        for event, files, cell in zip(events, _cell(data["file_list"]), gt_cells):
            entries = _cell(cell)
            if len(entries) != len(_cell(files)):
                raise ValueError(f"{path}: key 'gt_list' has {len(entries)} images in event {event}, "
                                 "file_list disagrees")
            lists.extend(np.asarray(e).ravel().astype(np.int64) - 1 for e in entries)
        if len(lists) != len(images):
            raise ValueError(f"{path}: key 'gt_list' covers {len(lists)} images, expected {len(images)}")
        for (event, name), k, b in zip(images, lists, boxes):
            if k.size and (k.min() < 0 or k.max() >= len(b)):
                raise ValueError(f"{path}: key 'gt_list' entry {event}/{name} indexes outside its "
                                 f"{len(b)} boxes (1-based values {k.min() + 1}..{k.max() + 1})")
        keep[subset] = lists
    return WiderGT(events=events, images=images, boxes=boxes, keep=keep)


def _obj(n: int) -> np.ndarray:
    return np.empty((n, 1), dtype=object)


def save_gt(gt: WiderGT, gt_dir: str | Path) -> Path:
    """Write ``gt`` as the four official .mat files (same nesting; label lists are zeros). Returns gt_dir.

    Images are written grouped by event in ``gt.events`` order (relative order kept), which is the order
    ``load_gt`` gives back; keep lists are stored 1-based, uint8 (uint16 for images with > 255 faces).
    """
    gt_dir = Path(gt_dir)
    gt_dir.mkdir(parents=True, exist_ok=True)
    per_event: dict[str, list[int]] = {e: [] for e in gt.events}
    for i, (event, _) in enumerate(gt.images):
        if event not in per_event:
            raise ValueError(f"save_gt: image event {event!r} is not in gt.events")
        per_event[event].append(i)
    n_ev = len(gt.events)
    cells = {k: _obj(n_ev) for k in (*_CELL_KEYS, *_LABEL_KEYS)}
    gt_lists = {s: _obj(n_ev) for s in SUBSETS}
    for e, event in enumerate(gt.events):
        idx = per_event[event]
        cells["event_list"][e, 0] = np.array([event])
        files, bbxs = _obj(len(idx)), _obj(len(idx))
        labels = _obj(len(idx))
        subs = {s: _obj(len(idx)) for s in SUBSETS}
        for j, i in enumerate(idx):
            b = np.asarray(gt.boxes[i], dtype=np.int32).reshape(-1, 4)
            files[j, 0] = np.array([gt.images[i][1]])
            bbxs[j, 0] = b
            labels[j, 0] = np.zeros((len(b), 1), dtype=np.uint8)
            dtype = np.uint8 if len(b) <= 255 else np.uint16 if len(b) <= 65535 else np.uint32
            for s in SUBSETS:
                subs[s][j, 0] = (np.asarray(gt.keep[s][i], dtype=np.int64) + 1).astype(dtype).reshape(-1, 1)
        cells["file_list"][e, 0] = files
        cells["face_bbx_list"][e, 0] = bbxs
        for k in _LABEL_KEYS:
            cells[k][e, 0] = labels
        for s in SUBSETS:
            gt_lists[s][e, 0] = subs[s]
    sio.savemat(str(gt_dir / GT_FILES["val"]), cells, do_compression=True)
    for s in SUBSETS:
        sio.savemat(str(gt_dir / GT_FILES[s]), {**cells, "gt_list": gt_lists[s]}, do_compression=True)
    return gt_dir


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


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC-2010 "area" AP: sentinels, right-to-left ``np.maximum`` envelope (NaN propagates), sum."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


class WiderFaceEvaluator:
    """``reset / process / evaluate`` evaluator over the WIDER val GT (or a subset of its images).

    ``images``: optional iterable of (event, name); counts and AP then cover only those images.
    After ``evaluate()``, ``self.curves[subset] = (recall [T], precision [T])`` over thresholds
    0.999 .. 0.000 (precision is NaN where no box passes the threshold).
    """

    def __init__(self, gt: WiderGT, images: Iterable[tuple[str, str]] | None = None) -> None:
        self.gt = gt
        if images is None:
            self.selected = np.arange(len(gt.images))
        else:
            self.selected = np.array(sorted({gt.index(e, n) for e, n in images}), dtype=np.int64)
        self._selected_set = set(self.selected.tolist())
        self.thresholds = 1 - np.arange(1, NUM_THRESHOLDS + 1) / NUM_THRESHOLDS   # [T] 0.999 .. 0.0
        self.curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.reset()

    def reset(self) -> None:
        self._preds: dict[int, np.ndarray] = {}
        self.curves = {}

    def process(self, event: str, name: str, dets) -> None:
        """Record one image's detections: float [n, 5] x, y, w, h, score (e.g. from ``dets_to_xywhs``).

        Images outside ``images=`` are ignored; an image given twice is an error.
        """
        i = self.gt.index(event, name)
        if i not in self._selected_set:
            return
        d = _numpy(dets).astype(np.float64)
        if d.size == 0:
            d = d.reshape(0, 5)
        if d.ndim != 2 or d.shape[1] < 5:
            raise ValueError(f"{event}/{name}: dets must be [n, 5] x,y,w,h,score, got shape {d.shape}")
        if not np.isfinite(d[:, :5]).all():
            raise ValueError(f"{event}/{name}: dets contain NaN or inf")
        if i in self._preds:
            raise ValueError(f"{event}/{name}: detections given twice")
        self._preds[i] = d[:, :5]

    def _normalised(self) -> dict[int, np.ndarray]:
        """Sort each image by score (descending, stable) and apply the global min-max normalisation."""
        lo, hi = 1.0, 0.0
        for d in self._preds.values():
            if len(d):
                lo, hi = min(lo, float(d[:, 4].min())), max(hi, float(d[:, 4].max()))
        out = {}
        with np.errstate(divide="ignore", invalid="ignore"):
            for i, d in self._preds.items():
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

    def evaluate(self) -> dict[str, float]:
        missing = len(self.selected) - len(self._preds)
        if missing:
            warnings.warn(f"WIDER evaluation: {missing} of {len(self.selected)} images have no prediction; "
                          "treated as images without detections", stacklevel=2)
        preds = self._normalised()
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
        evaluator.process(event, name, dets)
    if unknown:
        warnings.warn(f"{pred_dir}: {unknown} prediction files name images that are not in the WIDER GT; "
                      "ignored", stacklevel=2)
    results = evaluator.evaluate()
    if plot_dir is not None:
        from detkd.eval.plots import plot_pr_curves
        Path(plot_dir).mkdir(parents=True, exist_ok=True)
        plot_pr_curves(evaluator.curves, Path(plot_dir) / "pr_curves.png",
                       title="WIDER FACE val  " + "  ".join(f"{s} {results[s]:.4f}" for s in SUBSETS))
    return results
