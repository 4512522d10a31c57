"""WIDER FACE validation ground truth: the four official MATLAB files, read and written without torch (so that
``detkd eval widerface`` starts fast). Re-exported by ``detkd.data.widerface``; conventions there.

``WiderGT`` boxes are int32 ``[n, 4]`` **x, y, w, h**; keep lists are stored **0-based** (the files are 1-based).
"""
from __future__ import annotations

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
