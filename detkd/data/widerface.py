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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detkd.data.image import read_image  # noqa: F401  (re-exported)
from detkd.data import transforms as T
from detkd.errors import UserError
from detkd.data.widerface_gt import GT_FILES, SUBSETS, WiderGT, load_gt, save_gt  # noqa: F401  (re-exported)
from detkd.registry import register

_LANDMARK_COLS = [4, 5, 7, 8, 10, 11, 13, 14, 16, 17]  # x, y of the 5 points (vis flags skipped)
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
