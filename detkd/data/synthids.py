"""SynthIDs: a face-recognition training set and an LFW-style verification ``.bin`` built from real faces.

Source: the 100 real LFW face crops that scikit-image ships (``skimage.data.lfw_subset()[:100]``, 25×25 grey,
values 0..1; items 100..199 are non-faces and are not used). Every crop is one identity (two crops of the same
real person count as two identities; the crops are distinct images). The 100 identities are permuted by the
seed; the first ``n_train_ids`` are training identities, the next ``n_val_ids`` verification identities, so the
two sets are disjoint.

Every sample is a fresh strong augmentation of its identity's crop, rendered straight to ``img_size`` with one
bicubic affine warp (rotation, anisotropic scale, shear, translation, optional mirror), then illumination
(a linear gradient and a gamma), Gaussian blur, a slight per-channel colour gain, Gaussian noise and a random
occluding rectangle. ``strength`` scales every range (1.0 = the defaults below).

On disk (``write_synthids``):
    out/train/<id_XXX>/<k>.png     n_train_ids folders of imgs_per_id RGB images (FaceFolder layout)
    out/val.bin                    insightface .bin, n_pairs pairs in 10 contiguous folds; each fold holds
                                   n_pairs/20 same-identity pairs followed by n_pairs/20 different pairs (LFW order)
    out/meta.json                  the generation parameters (a matching file means "already written")
Everything is a pure function of the parameters (``seed`` included); each (identity, sample) has its own RNG.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from detkd.data.facerec import FaceFolder, VerificationPairs, write_bin
from detkd.registry import register

NUM_FACES = 100  # lfw_subset(): items 0..99 are faces, 100..199 non-faces
CROP = 25


@dataclass(frozen=True)
class SynthIDsSpec:
    seed: int = 0
    n_train_ids: int = 64
    imgs_per_id: int = 24
    n_val_ids: int = 30
    n_pairs: int = 600
    img_size: int = 64
    strength: float = 1.0
    version: int = 1

    def check(self) -> None:
        if self.n_train_ids < 2 or self.n_val_ids < 2:
            raise ValueError("SynthIDs needs at least 2 training and 2 verification identities")
        if self.n_train_ids + self.n_val_ids > NUM_FACES:
            raise ValueError(
                f"n_train_ids + n_val_ids = {self.n_train_ids + self.n_val_ids} exceeds the {NUM_FACES} "
                f"LFW face crops shipped with scikit-image"
            )
        if self.n_pairs <= 0 or self.n_pairs % 20:
            raise ValueError(f"n_pairs must be a positive multiple of 20 (10 folds, half same), got {self.n_pairs}")
        if self.imgs_per_id < 1 or self.img_size < 16:
            raise ValueError("imgs_per_id must be >= 1 and img_size >= 16")


def lfw_faces() -> np.ndarray:
    """The 100 LFW face crops, float32 [100, 25, 25] in 0..1."""
    from skimage.data import lfw_subset

    faces = np.asarray(lfw_subset()[:NUM_FACES], dtype=np.float32)
    if faces.shape != (NUM_FACES, CROP, CROP):
        raise RuntimeError(f"unexpected skimage lfw_subset shape {faces.shape}")
    return faces


def split_identities(seed: int, n_train: int, n_val: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint crop indices for training and verification identities."""
    perm = np.random.default_rng([seed, 7]).permutation(NUM_FACES)
    return perm[:n_train], perm[n_train : n_train + n_val]


def augment_face(face: np.ndarray, size: int, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """One strong augmentation of a grey crop ``[25, 25]`` (0..1) -> uint8 RGB ``[size, size, 3]``."""
    k = strength
    # geometry: a pose-like similarity+shear about the centre, rendered at the output size
    angle = np.deg2rad(rng.uniform(-18, 18) * k)
    scale = np.exp(rng.uniform(-0.12, 0.12) * k) * size / CROP
    aspect = np.exp(rng.uniform(-0.1, 0.1) * k)  # yaw-like horizontal squeeze
    shear = rng.uniform(-0.15, 0.15) * k
    flip = -1.0 if rng.random() < 0.5 else 1.0
    shift = rng.uniform(-0.08, 0.08, 2) * k * size
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    lin = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([scale * aspect * flip, scale / aspect])
    c_src = np.array([(CROP - 1) / 2, (CROP - 1) / 2])
    c_dst = np.array([(size - 1) / 2, (size - 1) / 2]) + shift
    mat = np.hstack([lin, (c_dst - lin @ c_src)[:, None]]).astype(np.float32)
    img = cv2.warpAffine(face, mat, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)

    # illumination: a directional gradient, then a gamma
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1) - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    grad = 1.0 + rng.uniform(0.0, 0.7) * k * (np.cos(theta) * xx + np.sin(theta) * yy)
    img = np.clip(img * grad * rng.uniform(1 - 0.25 * k, 1 + 0.25 * k), 0.0, 1.0)
    img = img ** np.exp(rng.uniform(-0.45, 0.45) * k)

    # blur
    sigma = rng.uniform(0.0, 1.2) * k * size / 64
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)

    # colour: slight per-channel gain (RGB)
    rgb = np.repeat(img[..., None], 3, axis=2) * (1.0 + rng.uniform(-0.1, 0.1, 3) * k).astype(np.float32)

    # noise
    rgb = rgb + rng.normal(0.0, rng.uniform(0.0, 0.06) * k, rgb.shape).astype(np.float32)

    # occlusion: a flat rectangle covering up to ~a fifth of the image
    if rng.random() < 0.5 * min(1.0, k):
        h = int(size * rng.uniform(0.15, 0.45))
        w = int(size * rng.uniform(0.15, 0.45))
        y0, x0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        rgb[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0.0, 1.0, 3)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _pairs(spec: SynthIDsSpec, n_val: int) -> list[tuple[int, int, bool]]:
    """(val index a, val index b, same) for every pair, in 10 folds of [same ×h, different ×h]."""
    rng = np.random.default_rng([spec.seed, 11])
    half = spec.n_pairs // 20
    pairs = []
    for _ in range(10):
        for _ in range(half):
            a = int(rng.integers(n_val))
            pairs.append((a, a, True))
        for _ in range(half):
            a, b = rng.choice(n_val, 2, replace=False)
            pairs.append((int(a), int(b), False))
    return pairs


def _write(out: Path, spec: SynthIDsSpec) -> None:
    faces = lfw_faces()
    train_ids, val_ids = split_identities(spec.seed, spec.n_train_ids, spec.n_val_ids)
    for i, crop in enumerate(train_ids):
        folder = out / "train" / f"id_{int(crop):03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(spec.imgs_per_id):
            rng = np.random.default_rng([spec.seed, 1, int(crop), k])
            img = augment_face(faces[crop], spec.img_size, rng, spec.strength)
            cv2.imwrite(str(folder / f"{k:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    images, issame = [], []
    for p, (a, b, same) in enumerate(_pairs(spec, len(val_ids))):
        for j, v in enumerate((a, b)):
            rng = np.random.default_rng([spec.seed, 2, p, j])
            images.append(augment_face(faces[val_ids[v]], spec.img_size, rng, spec.strength))
        issame.append(same)
    write_bin(out / "val.bin", images, issame, fmt=".png")
    meta = asdict(spec) | {"train_crops": [int(c) for c in train_ids], "val_crops": [int(c) for c in val_ids]}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))


def _matches(out: Path, spec: SynthIDsSpec) -> bool:
    meta = out / "meta.json"
    if not meta.is_file():
        return False
    try:
        saved = json.loads(meta.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all(saved.get(k) == v for k, v in asdict(spec).items()) and (out / "val.bin").is_file()


def write_synthids(out_dir: str | Path, seed: int = 0, n_train_ids: int = 64, imgs_per_id: int = 24,
                   n_val_ids: int = 30, n_pairs: int = 600, img_size: int = 64, strength: float = 1.0,
                   overwrite: bool = False) -> Path:
    """Write SynthIDs to ``out_dir`` (see module docstring); returns ``out_dir``.

    An existing ``out_dir`` whose ``meta.json`` matches the parameters is kept as is. Written into a temporary
    sibling and renamed, so concurrent writers (e.g. DDP ranks) never see a half-written set.
    """
    spec = SynthIDsSpec(seed, n_train_ids, imgs_per_id, n_val_ids, n_pairs, img_size, strength)
    spec.check()
    out = Path(out_dir)
    if _matches(out, spec) and not overwrite:
        return out
    if out.exists():
        if not (out / "meta.json").is_file() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a SynthIDs folder (no meta.json); choose another path")
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    _write(tmp, spec)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not _matches(out, spec):
            raise
    return out


@register("dataset")
def synthids(*, root: str = "data/synthids", split: str = "train", seed: int = 0, n_train_ids: int = 64,
             imgs_per_id: int = 24, n_val_ids: int = 30, n_pairs: int = 600, img_size: int = 64,
             strength: float = 1.0, flip: bool = False):
    """SynthIDs (written on first use): ``split="train"`` -> FaceFolder, ``"val"`` -> VerificationPairs."""
    if split not in ("train", "val"):
        raise ValueError(f"synthids: unknown split {split!r} (expected 'train' or 'val')")
    out = write_synthids(root, seed, n_train_ids, imgs_per_id, n_val_ids, n_pairs, img_size, strength)
    if split == "train":
        return FaceFolder(out / "train", img_size=img_size, flip=flip, seed=seed)
    return VerificationPairs(out / "val.bin", image_size=img_size)


__all__ = ["SynthIDsSpec", "augment_face", "lfw_faces", "split_identities", "synthids", "write_synthids"]
