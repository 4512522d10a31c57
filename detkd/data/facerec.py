"""Face-recognition data: identity folders for training and insightface verification ``.bin`` files.

Identity folders: ``root/<identity>/<image>`` (``.jpg .jpeg .png .bmp``). Labels are the index of the identity
name in sorted order; samples are sorted by (identity, file name). ``FaceFolder[i]`` returns
``(image float32 [3, S, S] RGB 0..255, label int)`` or, with ``with_teacher``, ``(image, label, teacher [D])``.
Images whose size differs from ``S`` are resized (cv2 INTER_AREA when shrinking, INTER_LINEAR otherwise).
``keys`` are the paths relative to ``root`` ("<identity>/<image>"), the stable keys of a teacher cache.
Augmentation (only an optional horizontal flip, off by default as in METHODS.md §5.3) is a pure function of
``(seed, epoch, index)``; call ``set_epoch(e)`` each epoch.

Verification ``.bin`` (EVAL.md §3.1): a pickle of ``(bins, issame)``, ``bins`` a list of 2N encoded images
(JPEG/PNG bytes), ``issame`` N bools; pair k = images (2k, 2k+1). ``read_bin`` returns
``images uint8 [2N, S, S, 3]`` RGB and ``issame bool [N]``.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import torch

from detkd.data.image import decode_image, read_image, resize_square, to_chw_float
from detkd.registry import register

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


# ------------------------------------------------------------------------------------------ images


def resize_short(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so that the short side is ``size`` (mxnet ``resize_short``, bilinear)."""
    h, w = image.shape[:2]
    if min(h, w) == size:
        return image
    if h <= w:
        nh, nw = size, int(round(w * size / h))
    else:
        nh, nw = int(round(h * size / w)), size
    return cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)


# ------------------------------------------------------------------------------------------ identity folders


def scan_identity_folders(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """``(identity names sorted, [(path, label), ...])``; errors when the root is missing or empty."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"identity folder root not found: {root}")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    samples = []
    for label, name in enumerate(names):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        samples += [(p, label) for p in files]
    if not samples:
        raise ValueError(f"no images found under {root} (expected root/<identity>/<image>{IMAGE_EXTS})")
    return names, samples


class FaceFolder(torch.utils.data.Dataset):
    """Identity-folder training set; see the module docstring for the sample format.

    ``with_teacher``: None, an array/tensor ``[N, D]`` aligned with ``samples``, or a mapping key -> ``[D]``
    (``keys`` order); the vector is returned as a float32 tensor after the label.
    """

    def __init__(self, root: str | Path, img_size: int = 112, with_teacher=None, flip: bool = False,
                 seed: int = 0):
        self.root = Path(root)
        self.img_size = int(img_size)
        self.identities, self.samples = scan_identity_folders(self.root)
        self.keys = [p.relative_to(self.root).as_posix() for p, _ in self.samples]
        self.labels = np.array([lab for _, lab in self.samples], dtype=np.int64)
        self.flip = flip
        self.seed = int(seed)
        self.epoch = 0
        self.teacher = None
        if with_teacher is not None:
            self.set_teacher(with_teacher)

    @property
    def num_classes(self) -> int:
        return len(self.identities)

    def set_teacher(self, teacher) -> None:
        """Attach teacher embeddings (array ``[N, D]`` in sample order, or mapping key -> ``[D]``)."""
        if isinstance(teacher, Mapping):
            missing = [k for k in self.keys if k not in teacher]
            if missing:
                raise KeyError(f"teacher cache lacks {len(missing)} sample keys, e.g. {missing[:3]}")
            teacher = np.stack([np.asarray(teacher[k], dtype=np.float32) for k in self.keys])
        t = torch.as_tensor(np.asarray(teacher), dtype=torch.float32)
        if t.dim() != 2 or t.shape[0] != len(self.samples):
            raise ValueError(f"teacher embeddings must be [N={len(self.samples)}, D], got {tuple(t.shape)}")
        self.teacher = t

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = resize_square(read_image(path), self.img_size)
        if self.flip and np.random.default_rng([self.seed, self.epoch, int(index)]).random() < 0.5:
            image = image[:, ::-1]
        x = to_chw_float(image)
        if self.teacher is not None:
            return x, int(label), self.teacher[index]
        return x, int(label)


# ------------------------------------------------------------------------------------------ verification .bin


def _load_pickle(path: Path):
    with open(path, "rb") as f:
        try:
            return pickle.load(f)
        except UnicodeDecodeError:  # Python 2 pickle of str objects
            f.seek(0)
            return pickle.load(f, encoding="bytes")


def read_bin(path: str | Path, image_size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """insightface verification ``.bin`` -> ``(images uint8 [2N, H, W, 3] RGB, issame bool [N])``.

    Images whose short side differs from ``image_size`` are resized (short side to ``image_size``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification .bin not found: {path}")
    try:
        obj = _load_pickle(path)
    except Exception as e:
        raise ValueError(f"{path}: not a verification .bin pickle ({type(e).__name__}: {e})") from e
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise ValueError(f"{path}: expected a pickled (bins, issame) pair, got {type(obj).__name__}")
    bins, issame = obj
    issame = np.asarray(issame, dtype=bool).reshape(-1)
    n_img = len(bins)
    if n_img % 2:
        raise ValueError(f"{path}: odd number of images ({n_img}); pairs need 2 images each")
    if n_img != 2 * len(issame):
        raise ValueError(f"{path}: {n_img} images but {len(issame)} issame labels (need 2 images per label)")
    images = []
    for i, data in enumerate(bins):
        if isinstance(data, str):  # a py2 str decoded as latin-1 text
            data = data.encode("latin-1")
        img = resize_short(decode_image(data, f"{path}: image {i}"), image_size)
        if images and img.shape != images[0].shape:
            raise ValueError(f"{path}: image {i} has shape {img.shape}, image 0 has {images[0].shape}")
        images.append(img)
    arr = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
    return arr, issame


def write_bin(path: str | Path, images_rgb: Sequence[np.ndarray] | np.ndarray, issame: Sequence[bool],
              fmt: str = ".jpg", quality: int = 95) -> Path:
    """Write an insightface ``.bin`` (pickle protocol 2 of (list of encoded bytes, list of bools))."""
    path = Path(path)
    if fmt not in (".jpg", ".png"):
        raise ValueError(f"write_bin: fmt must be '.jpg' or '.png', got {fmt!r}")
    issame = [bool(s) for s in issame]
    if len(images_rgb) != 2 * len(issame):
        raise ValueError(f"write_bin: {len(images_rgb)} images for {len(issame)} pairs (need 2 per pair)")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == ".jpg" else []
    bins = []
    for i, img in enumerate(images_rgb):
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"write_bin: image {i} must be uint8 [H, W, 3] RGB, got {img.dtype} {img.shape}")
        ok, buf = cv2.imencode(fmt, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ValueError(f"write_bin: cannot encode image {i}")
        bins.append(buf.tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump((bins, issame), f, protocol=2)
    tmp.replace(path)
    return path


class VerificationPairs(torch.utils.data.Dataset):
    """A ``.bin`` in memory: ``images uint8 [2N, S, S, 3]``, ``issame [N]``; item i -> float32 [3, S, S]."""

    def __init__(self, bin_path: str | Path, image_size: int = 112):
        self.path = Path(bin_path)
        self.images, self.issame = read_bin(self.path, image_size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_chw_float(self.images[index])


@register("dataset")
def face_folder(*, root: str, img_size: int = 112, flip: bool = False, seed: int = 0, split: str = "train",
                bin_path: str = ""):
    """Identity folders (``split="train"``) or a verification ``.bin`` (``split="val"``, ``bin_path``)."""
    if split == "train":
        return FaceFolder(root, img_size=img_size, flip=flip, seed=seed)
    if split == "val":
        return VerificationPairs(bin_path or Path(root) / "val.bin", image_size=img_size)
    raise ValueError(f"face_folder: unknown split {split!r} (expected 'train' or 'val')")


__all__ = [
    "FaceFolder", "VerificationPairs", "face_folder", "read_bin", "resize_short", "scan_identity_folders",
    "write_bin",
]
