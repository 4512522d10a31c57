"""SynthFaces: a face-detection data set built from real LFW face crops, written in WIDER FACE layout.

Sources (all shipped inside the scikit-image wheel, nothing is downloaded):
* ``skimage.data.lfw_subset()``: 200 grey 25 x 25 crops; the first 100 are faces, the last 100 non-faces
  (checked by eye). Train scenes use faces 0..79 and non-faces 100..179, val scenes faces 80..99 and non-faces
  180..199, so **val faces are disjoint from train faces** (80 train crops, 20 val crops). Six non-face crops
  that show a large part of a face (an eye pair, a half face, a smile: FACE_PART_NONFACES) are not used.
* Backgrounds: random crops of scikit-image sample photos that contain no human face (``astronaut`` and
  ``camera`` are left out) and procedural textures (smooth colour noise, stripes, gradients, shape clutter).

Every pasted object (face or distractor) goes through the same code: random flip, gamma, tint, aspect jitter,
scale, optional blur / low contrast, a feathered alpha mask, optional occluder. Distractors are the LFW
non-face crops, scrambled face crops (face texture and parts without the face layout) and crops of
the background photos, so no paste artefact tells faces from distractors.

Geometry of a face inside its 25 x 25 crop (from the mean of the 100 face crops): box x 2..20, y 0..25;
landmarks (left eye, right eye, nose, left mouth, right mouth) at FACE_LANDMARKS below. A paste maps crop
coordinates linearly to image pixels, so boxes and landmarks follow the paste exactly.

Difficulty (per val face, nested by construction; "h" = box height in pixels of a ``image_size`` image):
* easy:   h >= 28, blur <= 1, visible >= 0.85, normal contrast
* medium: h >= 16, blur <= 1, visible >= 0.6, normal contrast unless h >= 32
* hard:   every valid face (h >= 8, visible >= 0.35), incl. heavy blur, low contrast, crowds, occlusion
Faces less than 35 % visible are invalid: listed as GT boxes (ignored by the evaluator) but in no keep
list, and left out of the train ``label.txt``. Faces below 12 px or less than 60 % visible have no landmarks.

Everything is a pure function of ``seed``: image i of a split uses ``default_rng([seed, split, i])``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from detkd.errors import UserError
from detkd.registry import register

CROP = 25
FACE_BOX = np.array([2.0, 0.0, 20.0, 25.0], np.float32)  # face extent inside a crop, x1 y1 x2 y2
FACE_LANDMARKS = np.array([[6.5, 8.5], [15.5, 8.5], [11.0, 13.0], [7.5, 18.0], [14.5, 18.0]], np.float32)
TRAIN_FACES, VAL_FACES = range(0, 80), range(80, 100)
# non-face crops that show a large part of a face (eyes, a half face, a smile); pasted small and blurred they
# read as faces, so they are left out of the distractor pool (found by eye, see the module docstring)
FACE_PART_NONFACES = (114, 124, 125, 126, 130, 180)
TRAIN_NONFACES = tuple(i for i in range(100, 180) if i not in FACE_PART_NONFACES)
VAL_NONFACES = tuple(i for i in range(180, 200) if i not in FACE_PART_NONFACES)
BACKGROUND_PHOTOS = ("brick", "grass", "gravel", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
                     "coins", "moon", "page", "text", "clock", "immunohistochemistry", "stereo_motorcycle", "cell")
VERSION = 1


@dataclass(frozen=True)
class EventSpec:
    name: str
    faces: tuple[int, int]  # number of faces, inclusive range
    size: tuple[float, float]  # face box height range in px at image_size 320 (log-uniform)
    distract: float  # distractors per face
    layout: str  # "scatter" | "rows" | "crowd"
    p_blur: float  # probability of a blurred object (half of them heavily)
    p_lowc: float  # probability of a low-contrast object
    p_occ: float  # probability of an occluder on an object
    dark: bool = False


EVENTS = (
    EventSpec("Portrait", (1, 3), (56, 150), 1.5, "scatter", 0.1, 0.0, 0.1),
    EventSpec("Group", (4, 10), (22, 64), 1.0, "rows", 0.15, 0.1, 0.2),
    EventSpec("Crowd", (20, 50), (9, 26), 0.6, "crowd", 0.2, 0.15, 0.3),
    EventSpec("Street", (3, 14), (9, 90), 2.0, "scatter", 0.2, 0.15, 0.3),
    EventSpec("Motion", (3, 12), (12, 80), 1.2, "scatter", 0.7, 0.1, 0.2),
    EventSpec("Night", (3, 12), (10, 80), 1.2, "scatter", 0.25, 0.6, 0.2, dark=True),
)


def event_dir(k: int) -> str:
    return f"{k}--{EVENTS[k].name}"


# ----------------------------------------------------------------------------------------------- sources


@lru_cache(maxsize=1)
def _lfw() -> np.ndarray:
    from skimage.data import lfw_subset

    return lfw_subset().astype(np.float32)  # [200, 25, 25] in 0..1


@lru_cache(maxsize=2)
def _photos(max_side: int = 512) -> tuple[np.ndarray, ...]:
    """The background photos as uint8 RGB, long side at most ``max_side``."""
    import skimage.data as skd

    out = []
    for name in BACKGROUND_PHOTOS:
        img = getattr(skd, name)()
        img = img[0] if isinstance(img, tuple) else img
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = np.ascontiguousarray(img[:, :, :3]).astype(np.uint8)
        s = max_side / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        out.append(img)
    return tuple(out)


def _noise(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    """Zero-mean uniform pixel noise of standard deviation ``std`` (random bytes: much cheaper than normals)."""
    u = np.frombuffer(rng.bytes(int(np.prod(shape))), np.uint8).reshape(shape).astype(np.float32)
    return (u - 127.5) * np.float32(std * np.sqrt(12) / 256)


def _procedural(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(4)
    if kind == 0:  # smooth colour noise
        g = int(rng.integers(3, 17))
        img = cv2.resize(rng.uniform(0, 255, (g, g, 3)).astype(np.float32), (size, size),
                         interpolation=cv2.INTER_CUBIC)
    elif kind == 1:  # stripes
        yy, xx = np.mgrid[:size, :size].astype(np.float32)
        t = rng.uniform(0, np.pi)
        wave = np.sin((xx * np.cos(t) + yy * np.sin(t)) * rng.uniform(0.05, 0.6))
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = c0 + (c1 - c0) * (wave[..., None] * 0.5 + 0.5)
    elif kind == 2:  # gradient
        yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        a = rng.uniform(0, 1)
        img = c0 + (c1 - c0) * (a * xx + (1 - a) * yy)[..., None]
    else:  # flat colour
        img = np.ones((size, size, 3), np.float32) * rng.uniform(0, 255, 3)
    img = img + _noise(rng, (size, size, 1), rng.uniform(2, 15))
    return np.clip(img, 0, 255).astype(np.float32)


def _photo_crop(rng: np.random.Generator, out_h: int, out_w: int) -> np.ndarray:
    photos = _photos(512 if max(out_h, out_w) > 96 else 128)  # small crops come from a small copy (speed)
    img = photos[int(rng.integers(len(photos)))]
    h, w = img.shape[:2]
    side = int(rng.uniform(0.4, 1.0) * min(h, w))
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = cv2.resize(img[y : y + side, x : x + side], (out_w, out_h), interpolation=cv2.INTER_AREA)
    if rng.integers(2):
        crop = crop[:, ::-1]
    return crop.astype(np.float32)


def _clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    """Random rectangles, ellipses and lines: edges that are not faces."""
    size = img.shape[0]
    for _ in range(int(rng.integers(2, 12))):
        c = tuple(float(v) for v in rng.uniform(0, 255, 3))
        p = rng.integers(0, size, 4)
        r = int(rng.integers(3))
        if r == 0:
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), c, -1)
        elif r == 1:
            axes = (int(rng.integers(3, size // 4)), int(rng.integers(3, size // 4)))
            cv2.ellipse(img, (int(p[0]), int(p[1])), axes, float(rng.uniform(0, 180)), 0, 360, c, -1)
        else:
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), c, int(rng.integers(1, 6)))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 [size, size, 3] RGB 0..255."""
    if rng.random() < 0.6:
        img = _photo_crop(rng, size, size)
        if rng.random() < 0.3:
            img = 0.6 * img + 0.4 * _procedural(rng, size)
    else:
        img = _procedural(rng, size)
    img = np.ascontiguousarray(img)
    if rng.random() < 0.5:
        _clutter(rng, img)
    gain, bias = rng.uniform(0.7, 1.2, 3).astype(np.float32), rng.uniform(-20, 20, 3).astype(np.float32)
    return np.clip(img * gain + bias, 0, 255, dtype=np.float32)


# -------------------------------------------------------------------------------------------- objects


def _tint(rng: np.random.Generator) -> np.ndarray:
    """An RGB multiplier: mostly skin-like hues, sometimes any hue; the same for faces and distractors."""
    hue = rng.uniform(5, 30) if rng.random() < 0.7 else rng.uniform(0, 360)
    sat = rng.uniform(0.1, 0.6)
    hsv = np.array([[[hue / 2, sat * 255, 255]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32) / 255


def _scramble(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Face texture without the face layout: the 25 tiles (5 x 5 px) of a face crop randomly permuted.
    (Reordering whole bands was tried and dropped: at small sizes it still reads as a face.)"""
    tiles = crop.reshape(5, 5, 5, 5).transpose(0, 2, 1, 3).reshape(25, 5, 5)[rng.permutation(25)]
    return tiles.reshape(5, 5, 5, 5).transpose(0, 2, 1, 3).reshape(CROP, CROP)


def _distractor_crop(rng: np.random.Generator, nonfaces, faces) -> np.ndarray:
    u = rng.random()
    lfw = _lfw()
    if u < 0.65:
        return lfw[nonfaces[int(rng.integers(len(nonfaces)))]]
    if u < 0.85:
        return _scramble(lfw[faces[int(rng.integers(len(faces)))]], rng)
    photo = _photo_crop(rng, CROP, CROP)
    return photo.mean(axis=2) / 255


@lru_cache(maxsize=4096)
def _feather(ph: int, pw: int, edge: float) -> np.ndarray:
    """Alpha [ph, pw]: a superellipse (p=4) fading to 0 over ``edge`` of the normalised radius."""
    v = (np.arange(ph, dtype=np.float32) + 0.5) / ph * 2 - 1
    u = (np.arange(pw, dtype=np.float32) + 0.5) / pw * 2 - 1
    r = (np.abs(u)[None, :] ** 4 + np.abs(v)[:, None] ** 4) ** 0.25
    return np.clip((1 - r) / edge, 0, 1)


@dataclass
class _Paste:
    face: bool
    x: int  # patch top-left in the image
    y: int
    pw: int
    ph: int
    flip: bool
    box: np.ndarray | None = None  # [4] face box xyxy (faces only)
    landmarks: np.ndarray | None = None  # [5, 2]
    blur: int = 0
    lowc: bool = False
    area: int = 0  # face-box pixels this paste covered when pasted


def _place(face_h: float, aspect: float, cx: float, cy: float, flip: bool, size: int, face: bool) -> _Paste:
    """Patch geometry for a face box of height ``face_h`` centred near (cx, cy), kept inside the image."""
    ph = max(4, round(face_h * CROP / (FACE_BOX[3] - FACE_BOX[1])))
    pw = max(4, round(ph * aspect))
    kx, ky = pw / CROP, ph / CROP
    bx1, bx2 = (CROP - FACE_BOX[2], CROP - FACE_BOX[0]) if flip else (FACE_BOX[0], FACE_BOX[2])
    bw, bh = (bx2 - bx1) * kx, ph
    x = round(np.clip(cx - bw / 2, 0, size - bw) - bx1 * kx)
    y = round(np.clip(cy - bh / 2, 0, size - bh))
    p = _Paste(face, int(x), int(y), pw, ph, flip)
    if face:
        box = [x + bx1 * kx, y + FACE_BOX[1] * ky, x + bx2 * kx, y + FACE_BOX[3] * ky]
        p.box = np.clip(np.array(box, np.float32), 0, size)  # rounding may overshoot by < 1 px
        lm = FACE_LANDMARKS.copy()
        if flip:
            lm[:, 0] = CROP - lm[:, 0]
            lm = lm[[1, 0, 2, 4, 3]]
        p.landmarks = (lm * [kx, ky] + [x, y]).astype(np.float32)
    return p


def _blend(img, owner, patch, alpha, x, y, ident) -> int:
    """Alpha-blend ``patch`` [ph,pw,3] at (x, y) (clipped to the image); mark owner where alpha > 0.5."""
    size_h, size_w = img.shape[:2]
    ph, pw = alpha.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + pw, size_w), min(y + ph, size_h)
    if x0 >= x1 or y0 >= y1:
        return 0
    a = alpha[y0 - y : y1 - y, x0 - x : x1 - x, None]
    region = img[y0:y1, x0:x1]
    region[:] = a * patch[y0 - y : y1 - y, x0 - x : x1 - x] + (1 - a) * region
    owner[y0:y1, x0:x1][a[..., 0] > 0.5] = ident
    return int((a > 0.5).sum())


def _render(p: _Paste, crop: np.ndarray, img, owner, ident, rng, spec: EventSpec) -> None:
    g = crop[:, ::-1] if p.flip else crop
    g = np.clip(g, 0, 1) ** rng.uniform(0.7, 1.4)
    patch = cv2.resize(np.ascontiguousarray(g), (p.pw, p.ph), interpolation=cv2.INTER_AREA if p.ph < CROP
                       else cv2.INTER_LINEAR)
    patch = patch[..., None] * _tint(rng) * rng.uniform(170, 290)  # [ph, pw, 3]
    if rng.random() < spec.p_blur:
        p.blur = 1 if rng.random() < 0.5 else 2
        sigma = p.ph * (rng.uniform(0.03, 0.06) if p.blur == 1 else rng.uniform(0.09, 0.16))
        patch = cv2.GaussianBlur(patch, (0, 0), max(sigma, 0.5))
    x0, y0 = max(p.x, 0), max(p.y, 0)
    under = img[y0 : y0 + p.ph, x0 : x0 + p.pw]
    if rng.random() < spec.p_lowc and under.size:
        p.lowc = True
        m = under.reshape(-1, 3).mean(0)
        patch = m + rng.uniform(0.3, 0.6) * (patch - patch.reshape(-1, 3).mean(0))
    alpha = _feather(p.ph, p.pw, round(float(rng.uniform(0.15, 0.35)), 1))
    _blend(img, owner, np.clip(patch, 0, 255), alpha, p.x, p.y, ident)
    if p.face:
        x1, y1, x2, y2 = np.round(p.box).astype(int)
        p.area = int((owner[max(y1, 0) : y2, max(x1, 0) : x2] == ident).sum())


def _occlude(p: _Paste, img, owner, rng) -> None:
    """An opaque object over a side of the paste (a hand, a scarf, another head's hair...)."""
    side = int(rng.integers(4))
    f = rng.uniform(0.25, 0.6)
    x, y, w, h = p.x, p.y, p.pw, p.ph
    if side == 0:
        x, y, w, h = x, y + round(h * (1 - f)), w, max(2, round(h * f) + 2)
    elif side == 1:
        x, y, w, h = x, y - 2, w, max(2, round(h * f) + 2)
    elif side == 2:
        x, y, w, h = x - 2, y, max(2, round(w * f) + 2), h
    else:
        x, y, w, h = x + round(w * (1 - f)), y, max(2, round(w * f) + 2), h
    patch = _photo_crop(rng, h, w) if rng.random() < 0.6 else np.ones((h, w, 3), np.float32) * rng.uniform(0, 255, 3)
    alpha = np.ones((h, w), np.float32) if rng.random() < 0.5 else np.maximum(_feather(h, w, 0.1), 0.0)
    _blend(img, owner, patch, alpha, int(x), int(y), -2)


def _layout(rng: np.random.Generator, spec: EventSpec, size: int) -> list[tuple[float, float, float]]:
    """(cx, cy, face_h) of every object slot, faces and distractors alike."""
    s = size / 320
    lo, hi = spec.size[0] * s, spec.size[1] * s
    n_faces = int(rng.integers(spec.faces[0], spec.faces[1] + 1))
    n = n_faces + int(round(n_faces * spec.distract * rng.uniform(0.6, 1.4)))
    if spec.layout == "crowd":  # a dense grid of rows over a band of the image, heads smaller towards the top
        top = rng.uniform(0.0, 0.4) * size
        grid, y = [], top + lo / 2
        while y < size - lo / 2:
            t = (y - top) / max(size - top, 1)
            h = lo + (hi - lo) * t
            x = rng.uniform(0, h)
            while x < size:
                grid.append((x, y + rng.normal(0, 0.15 * h), h * rng.uniform(0.85, 1.15)))
                x += h * rng.uniform(0.75, 1.25)
            y += h * rng.uniform(0.85, 1.2)
        pick = rng.permutation(len(grid))[: min(n, len(grid))]
        return [grid[k] for k in np.sort(pick)]
    if spec.layout == "rows":
        slots = []
        rows = int(rng.integers(1, 4))
        for r in range(rows):
            yc = size * (r + 1) / (rows + 1) + rng.normal(0, 0.03 * size)
            k = int(np.ceil(n / rows))
            h = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            for i in range(k):
                slots.append((size * (i + 0.5 + rng.normal(0, 0.15)) / k, yc + rng.normal(0, 0.1 * h),
                              h * rng.uniform(0.85, 1.15)))
        return slots[:n]
    return [(rng.uniform(0, size), rng.uniform(0, size), float(np.exp(rng.uniform(np.log(lo), np.log(hi)))))
            for _ in range(n)]


def render_scene(rng: np.random.Generator, spec: EventSpec, size: int, faces, nonfaces):
    """One scene: ``(image uint8 [size,size,3] RGB, list of face dicts)``; each face dict holds ``box`` [4]
    xyxy, ``landmarks`` [5,2], ``height``, ``blur`` (0/1/2), ``lowc``, ``visible`` (fraction)."""
    img = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)
    slots = _layout(rng, spec, size)
    n_faces = max(1, round(len(slots) / (1 + spec.distract)))
    is_face = np.zeros(len(slots), bool)
    is_face[rng.permutation(len(slots))[:n_faces]] = True
    pastes = []
    lfw = _lfw()
    for k, ((cx, cy, h), face) in enumerate(zip(slots, is_face)):
        h = float(np.clip(h, 8, 0.9 * size))
        p = _place(h, rng.uniform(0.85, 1.1), cx, cy, bool(rng.integers(2)), size, bool(face))
        crop = lfw[faces[int(rng.integers(len(faces)))]] if face else _distractor_crop(rng, nonfaces, faces)
        _render(p, crop, img, owner, k, rng, spec)
        if rng.random() < spec.p_occ:
            _occlude(p, img, owner, rng)
        pastes.append(p)
    if spec.dark:
        lut = 255 * (np.arange(256, dtype=np.float32) / 255) ** rng.uniform(1.2, 2.0) * rng.uniform(0.55, 0.9)
        img = lut[np.clip(img, 0, 255).astype(np.uint8)]
    img += _noise(rng, img.shape, rng.uniform(0, 6))
    image = np.clip(img, 0, 255).astype(np.uint8)
    out = []
    for k, p in enumerate(pastes):
        if not p.face:
            continue
        x1, y1, x2, y2 = np.round(p.box).astype(int)
        seen = int((owner[max(y1, 0) : y2, max(x1, 0) : x2] == k).sum())
        out.append({"box": p.box, "landmarks": p.landmarks, "height": float(p.box[3] - p.box[1]),
                    "blur": p.blur, "lowc": p.lowc, "visible": seen / max(p.area, 1)})
    return image, out


def subsets_of(face: dict, size: int) -> tuple[bool, bool, bool]:
    """(easy, medium, hard) membership of a face; nested by construction."""
    h = face["height"] * 320 / size
    hard = h >= 8 and face["visible"] >= 0.35
    medium = hard and h >= 16 and face["blur"] <= 1 and face["visible"] >= 0.6 and (h >= 32 or not face["lowc"])
    easy = medium and h >= 28 and face["visible"] >= 0.85 and not face["lowc"]
    return easy, medium, hard


def _has_landmarks(face: dict, size: int) -> bool:
    return face["height"] * 320 / size >= 12 and face["visible"] >= 0.6


# --------------------------------------------------------------------------------------------- writer


def _write_jpg(path: Path, image: np.ndarray, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok = cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"cannot write {path}")


def _label_line(face: dict, size: int) -> str:
    x1, y1, x2, y2 = (float(v) for v in face["box"])
    parts = [f"{x1:.2f}", f"{y1:.2f}", f"{x2 - x1:.2f}", f"{y2 - y1:.2f}"]
    if _has_landmarks(face, size):
        for lx, ly in face["landmarks"]:
            parts += [f"{lx:.3f}", f"{ly:.3f}", "0.0"]
    else:
        parts += ["-1.0"] * 15
    parts.append(f"{1.0 - 0.3 * face['blur']:.2f}")
    return " ".join(parts)


def _scenes(seed: int, split: int, n: int, size: int, faces, nonfaces):
    for i in range(n):
        rng = np.random.default_rng([seed, split, i])
        ev = i % len(EVENTS)
        image, fs = render_scene(rng, EVENTS[ev], size, faces, nonfaces)
        yield i, ev, image, fs, int(rng.integers(75, 96))


def write_synthfaces(out_dir: str | Path, seed: int = 0, n_train: int = 600, n_val: int = 150,
                     image_size: int = 320) -> Path:
    """Write SynthFaces under ``out_dir`` in WIDER layout (see the module docstring). Returns ``out_dir``."""
    from detkd.data.widerface import WiderGT, save_gt

    out = Path(out_dir)
    train_lines: list[str] = []
    for i, ev, image, fs, q in _scenes(seed, 0, n_train, image_size, TRAIN_FACES, TRAIN_NONFACES):
        rel = f"{event_dir(ev)}/{ev}_{EVENTS[ev].name}_{i}.jpg"
        _write_jpg(out / "train" / "images" / rel, image, q)
        train_lines.append(f"# {rel}")
        train_lines += [_label_line(f, image_size) for f in fs if subsets_of(f, image_size)[2]]
    (out / "train" / "label.txt").write_text("\n".join(train_lines) + "\n")

    images, boxes, keep = [], [], {"easy": [], "medium": [], "hard": []}
    for i, ev, image, fs, q in _scenes(seed, 1, n_val, image_size, VAL_FACES, VAL_NONFACES):
        name = f"{ev}_{EVENTS[ev].name}_{i}"
        _write_jpg(out / "val" / "images" / event_dir(ev) / f"{name}.jpg", image, q)
        images.append((event_dir(ev), name))
        xywh = np.zeros((len(fs), 4), np.int32)
        for j, f in enumerate(fs):
            x1, y1, x2, y2 = np.round(f["box"]).astype(int)
            xywh[j] = (x1, y1, x2 - x1, y2 - y1)
        boxes.append(xywh)
        member = np.array([subsets_of(f, image_size) for f in fs], bool).reshape(-1, 3)
        for c, s in enumerate(("easy", "medium", "hard")):
            keep[s].append(np.flatnonzero(member[:, c]).astype(np.int64))
    order = sorted(range(len(images)), key=lambda k: images[k])  # events in lexicographic order, like WIDER
    events = sorted({e for e, _ in images})
    gt = WiderGT(events=events, images=[images[k] for k in order], boxes=[boxes[k] for k in order],
                 keep={s: [v[k] for k in order] for s, v in keep.items()})
    save_gt(gt, out / "val" / "gt")
    info = {"version": VERSION, "seed": seed, "n_train": n_train, "n_val": n_val, "image_size": image_size}
    (out / "synthfaces.json").write_text(json.dumps(info, indent=1) + "\n")
    return out


def ensure_synthfaces(root: str | Path, seed: int = 0, n_train: int = 600, n_val: int = 150,
                      image_size: int = 320) -> Path:
    """Write SynthFaces at ``root`` unless a copy with the same parameters is already there."""
    root = Path(root)
    info = {"version": VERSION, "seed": seed, "n_train": n_train, "n_val": n_val, "image_size": image_size}
    stamp = root / "synthfaces.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == info:
        return root
    if stamp.is_file():
        raise UserError(stamp_mismatch("SynthFaces", stamp, json.loads(stamp.read_text()), info), key="data.root",
                        path=root)
    return write_synthfaces(root, seed, n_train, n_val, image_size)


# the config keys (``SynthFacesDataConfig`` / ``SynthShapesDataConfig``) behind a generated set's stamp fields
STAMP_KEYS = {"seed": "data.data_seed", "n_train": "data.n_train", "n_val": "data.n_val"}


def stamp_mismatch(what: str, stamp: Path, have: dict, want: dict) -> str:
    """One line: the generated data at ``stamp.parent`` was made with other parameters than the config asks
    for; names each differing field by its config key and, when those keys explain it all, how to train on it."""
    diff = [k for k in want if have.get(k) != want[k]]
    parts = [f"{STAMP_KEYS.get(k, k)}: {have.get(k)!r} there, {want[k]!r} asked" for k in diff]
    fix = " ".join(f"{STAMP_KEYS[k]}={have.get(k)}" for k in diff if k in STAMP_KEYS)
    hint = f"set {fix} to train on it, or " if all(k in STAMP_KEYS for k in diff) else ""
    return (f"{stamp.parent} holds {what} made with other parameters ({stamp}: {'; '.join(parts)}); "
            f"{hint}choose another data.root")


@register("dataset")
def synthfaces(*, root: str, img_size: int = 320, augment: bool = True, seed: int = 0, split: str = "train",
               data_seed: int = 0, n_train: int = 600, n_val: int = 150, image_size: int = 320,
               images_dir: str | None = None, gt_dir: str | None = None):
    """SynthFaces (written to ``root`` on first use, then read like WIDER FACE; ``images_dir`` / ``gt_dir``
    replace the val split's image and GT folders)."""
    from detkd.data.widerface import WiderFaceTrain, WiderFaceVal

    ensure_synthfaces(root, data_seed, n_train, n_val, image_size)
    if split == "train":
        return WiderFaceTrain(root, img_size=img_size, augment=augment, seed=seed)
    if split == "val":
        return WiderFaceVal(images_dir or root, gt_dir or Path(root) / "val" / "gt")
    raise ValueError(f"synthfaces: unknown split {split!r} (expected 'train' or 'val')")
