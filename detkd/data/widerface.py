"""WIDER FACE readers: the retinaface_gt_v1.1 ``label.txt`` (train) and the official val ground truth.

Layout (real data and SynthFaces alike; docs/contracts.md):
    ROOT/train/label.txt                    "# <event>/<name>.jpg" then one line per face
    ROOT/train/images/<event>/<name>.jpg
    ROOT/val/images/<event>/<name>.jpg
    ROOT/val/gt/wider_face_val.mat, wider_{easy,medium,hard}_val.mat   (EVAL.md §1.1)

A face line holds ``x y w h`` and optionally 5 x (lx ly vis) landmarks and a blur value (19 or 20 numbers).
Box -> x1, y1, x1 + w, y1 + h. A face has valid landmarks iff it has them and the first landmark x >= 0.

Validation ground truth (``WiderGT``, ``load_gt``, ``save_gt``): the four official MATLAB files
(``wider_face_val.mat`` and ``wider_{easy,medium,hard}_val.mat``), read with plain ``scipy.io.loadmat`` (no
``squeeze_me``). GT boxes are int32 ``[n, 4]`` **x, y, w, h**; keep lists are stored here **0-based** (the files
are 1-based). ``detkd.eval.widerface`` evaluates against them.

Sample conventions: ``WiderFaceTrain[i]`` -> ``(image float32 [3,S,S] RGB 0..255, target, meta)`` with
``target = {boxes float32 [N,4] xyxy, labels int64 [N] (1), landmarks float32 [N,5,2], landmarks_valid bool [N]}``
in S x S input pixels and ``meta = {path, orig_size (H, W), index}``. Augmentation randomness is a pure function
of ``(seed, epoch, index)``; call ``set_epoch(e)`` each epoch.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io as sio
import torch

from detkd.data.image import read_image  # noqa: F401  (re-exported)
from detkd.data import transforms as T
from detkd.errors import UserError
from detkd.registry import register

_LANDMARK_COLS = [4, 5, 7, 8, 10, 11, 13, 14, 16, 17]  # x, y of the 5 points (vis flags skipped)
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


# ----------------------------------------------------------------------------------------------------------
# Training annotations and data sets
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Record:
    """One annotated image: ``boxes [n,4]`` xyxy float32, ``landmarks [n,5,2]`` float32, ``landmarks_valid [n]``."""

    path: Path
    boxes: np.ndarray
    landmarks: np.ndarray
    landmarks_valid: np.ndarray

    @property
    def rel(self) -> str:
        return "/".join(self.path.parts[-2:])


def _finish(path: Path, rows: list[list[float]]) -> Record:
    n = len(rows)
    boxes = np.zeros((n, 4), np.float32)
    lms = np.full((n, 5, 2), -1.0, np.float32)
    valid = np.zeros(n, bool)
    for i, r in enumerate(rows):
        x, y, w, h = r[:4]
        boxes[i] = (x, y, x + w, y + h)
        if len(r) >= 19:
            lms[i] = np.asarray([r[c] for c in _LANDMARK_COLS], np.float32).reshape(5, 2)
            valid[i] = r[4] >= 0
    return Record(path, boxes, lms, valid)


def read_label_txt(path: str | Path, images_dir: str | Path | None = None) -> list[Record]:
    """Parse a retinaface_gt ``label.txt``. Image paths are ``images_dir / <rel path>`` (default: the
    ``images`` folder next to the file). Faces with non-positive w or h are dropped (one warning per file
    with the count); a malformed line raises ValueError naming ``file:line``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    images_dir = Path(images_dir) if images_dir is not None else path.parent / "images"
    records: list[Record] = []
    current: Path | None = None
    rows: list[list[float]] = []
    dropped = 0
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                if current is not None:
                    records.append(_finish(current, rows))
                rel = line[1:].strip()
                if not rel:
                    raise UserError(f"{path}:{lineno}: '#' line without an image path: {line!r}")
                current, rows = images_dir / rel, []
                continue
            if current is None:
                raise UserError(f"{path}:{lineno}: face line before any '# <image>' line: {line!r}")
            try:
                vals = [float(t) for t in line.split()]
            except ValueError:
                raise UserError(f"{path}:{lineno}: non-numeric value in face line: {line!r}") from None
            if len(vals) not in (4, 19, 20) or not np.all(np.isfinite(vals)):
                raise UserError(
                    f"{path}:{lineno}: expected 4, 19 or 20 finite numbers (x y w h [5 x (lx ly vis)] [blur]),"
                    f" got {len(vals)}: {line!r}"
                )
            if vals[2] <= 0 or vals[3] <= 0:
                dropped += 1
                continue
            rows.append(vals)
    if current is not None:
        records.append(_finish(current, rows))
    if dropped:
        warnings.warn(f"{path}: dropped {dropped} face(s) with non-positive width or height", stacklevel=2)
    return records


def _target(boxes, landmarks, valid) -> dict[str, torch.Tensor]:
    n = len(boxes)
    return {
        "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(n, 4),
        "labels": torch.ones(n, dtype=torch.int64),
        "landmarks": torch.as_tensor(landmarks, dtype=torch.float32).reshape(n, 5, 2),
        "landmarks_valid": torch.as_tensor(valid, dtype=torch.bool).reshape(n),
    }


class WiderFaceTrain(torch.utils.data.Dataset):
    """``root/train/label.txt`` + ``root/train/images``; §1.5 augmentation when ``augment``."""

    def __init__(self, root: str | Path, img_size: int = 640, augment: bool = True, seed: int = 0):
        self.root = Path(root)
        label = self.root / "train" / "label.txt"
        self.records = read_label_txt(label, self.root / "train" / "images")
        self.img_size = int(img_size)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        rec = self.records[index]
        image = read_image(rec.path)
        args = (image, rec.boxes.copy(), rec.landmarks.copy(), rec.landmarks_valid.copy())
        if self.augment:
            img, boxes, lms, valid = T.train_transform(*args, self.img_size, self.rng(index))
        else:
            img, boxes, lms, valid = T.plain_transform(*args, self.img_size)
        meta = {"path": str(rec.path), "orig_size": tuple(image.shape[:2]), "index": int(index)}
        return img, _target(boxes, lms, valid), meta


def _images_dir(root: Path) -> Path:
    for cand in (root / "val" / "images", root / "images"):
        if cand.is_dir():
            return cand
    return root


class WiderFaceVal(torch.utils.data.Dataset):
    """Every image of the val ground truth, in GT order: ``(image uint8 [H,W,3] RGB, meta)`` with
    ``meta = {image_id ("event/name"), event, name, path, boxes (int32 [n,4] xywh), index}``. Images are read only on access.

    ``root_or_images_dir`` is a WIDER root (``<root>/val/images``), a folder holding ``images/``, or the images
    folder itself (``<event>/<name>.jpg`` inside, or flat ``<name>.jpg``). ``gt_dir`` defaults to ``<root>/val/gt``.
    """

    def __init__(self, root_or_images_dir: str | Path, gt_dir: str | Path | None = None):
        root = Path(root_or_images_dir)
        self.images_dir = _images_dir(root)
        self.gt_dir = Path(gt_dir) if gt_dir is not None else root / "val" / "gt"
        self.gt = load_gt(self.gt_dir)

    def __len__(self) -> int:
        return len(self.gt.images)

    def path(self, index: int) -> Path:
        """``images/<event>/<name>.jpg``; a flat ``images/<name>.jpg`` is accepted when only that exists."""
        event, name = self.gt.images[index]
        nested = self.images_dir / event / f"{name}.jpg"
        flat = self.images_dir / f"{name}.jpg"
        return flat if not nested.is_file() and flat.is_file() else nested

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"WiderFaceVal index {index} out of range [0, {len(self)})")
        event, name = self.gt.images[index]
        path = self.path(index)
        image = read_image(path)
        return image, {"image_id": f"{event}/{name}", "event": event, "name": name, "path": str(path),
                       "boxes": self.gt.boxes[index], "index": index}

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


@register("dataset")
def widerface(*, root: str, img_size: int = 640, augment: bool = True, seed: int = 0, split: str = "train",
              gt_dir: str | None = None, images_dir: str | None = None):
    """WIDER FACE: ``split="train"`` -> WiderFaceTrain, ``"val"`` -> WiderFaceVal (images from ``images_dir``
    and GT from ``gt_dir`` when given, else from ``root``'s layout)."""
    if split == "train":
        return WiderFaceTrain(root, img_size=img_size, augment=augment, seed=seed)
    if split == "val":
        return WiderFaceVal(images_dir or root, gt_dir or Path(root) / "val" / "gt")
    raise ValueError(f"widerface: unknown split {split!r} (expected 'train' or 'val')")
