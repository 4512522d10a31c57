"""SynthShapes: the embedded generic-detection set (12 shape classes), written in VOC layout and as COCO JSON.

Design goal: distillation must be measurable on 2 CPU cores, so the set has a capacity gap and no shortcut.
* **Class = shape and structure, never colour.** Fill (flat colour, gradient, stripes, photo or procedural
  texture), outline, opacity, size, aspect jitter and rotation are drawn independently of the class. Some
  pairs differ only in detail: circle / ring (filled vs hollow), square / frame, star5 / star6,
  circle / pacman (a notch), circle / hexagon at small sizes, crescent / pacman.
* **Distractors** (blobs, 4-point stars, L shapes, semicircles, irregular quadrilaterals, bars) are rendered
  by the very same code (same fills, blending, edges, blur) and are never annotated.
* **Scale and clutter.** Object size (the longer side of the unrotated shape) from ``size_min`` (6 px) to
  ``size_max_frac`` of the scene, log-uniform raised to ``size_tail`` (a long tail of small objects); crowds
  (clusters of small, overlapping objects); later shapes occlude earlier ones; shapes cross the border
  (truncation); backgrounds are SynthFaces' scikit-image photos (minus coins, clock, retina: disks) and
  procedural textures, without its random rectangles / ellipses (unlabelled class look-alikes).
* **Annotation.** The box is the extent of the object's *visible* pixels (VOC's rule). ``difficult`` when
  less than ``difficult_visible`` of the shape is visible or its box is smaller than ``difficult_size`` px;
  ``truncated`` when part of it lies outside the image; objects with no visible pixel are not annotated.

Layout (``DIR``)::

    Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/{train,val}.txt     (VOC; ids 1000000+i / 2000000+i)
    annotations/instances_{train,val}.json                                        (COCO; image id = int(<id>),
                                                                                   category id = label 1..12)
    synthshapes.json                                                              (parameters and counts)

Both readers give identical targets (difficult objects: ``iscrowd = 1, difficult = 1`` in the COCO file, as
``detkd convert voc2coco`` writes them). Scene ``i`` of split ``s`` is a pure function of
``default_rng([seed, s, i])`` (generation runs in ``workers`` processes; the output does not depend on it).
Every difficulty knob is a field of :class:`SynthShapesConfig`.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from detkd.data.detection import ResizeConfig
from detkd.data.synthfaces import (  # SynthFaces photos, textures; the stamp check
    BACKGROUND_PHOTOS, _noise, _photos, _procedural, stamp_mismatch,
)
from detkd.errors import UserError
from detkd.registry import register

SYNTHSHAPES_CLASSES = ("circle", "ring", "square", "frame", "triangle", "star5", "star6", "cross", "hexagon",
                       "pacman", "crescent", "arrow")
DISTRACTORS = ("blob", "star4", "lshape", "semicircle", "quad", "bar")
VERSION = 1
SPLITS = {"train": 0, "val": 1}
# SynthFaces photos minus those whose content reads as a class (coins and a clock face are disks, the retina
# fundus is a big disk on black): unlabelled look-alikes would be label noise
PHOTOS = tuple(i for i, n in enumerate(BACKGROUND_PHOTOS) if n not in ("coins", "retina", "clock"))
_SUB = 4  # fillPoly sub-pixel bits: coordinates are fixed point with 1/16 px resolution


@dataclass
class SynthShapesConfig:
    """Every knob of the scene generator (the calibration of teacher vs student gap tunes these)."""

    side_range: tuple[int, int] = (320, 512)        # scene width and height, each drawn in this range (step 32)
    objects: tuple[int, int] = (2, 10)              # annotated-class shapes per scene (uniform, inclusive)
    distractors: tuple[int, int] = (1, 6)           # distractor shapes per scene
    p_crowd: float = 0.25                           # chance of one crowd (cluster of small objects)
    crowd_objects: tuple[int, int] = (5, 14)
    crowd_size: tuple[float, float] = (8.0, 28.0)
    size_min: float = 6.0                           # px
    size_max_frac: float = 0.8                      # of the scene's short side
    size_tail: float = 1.7                          # > 1 moves sizes toward size_min
    aspect_jitter: float = 0.25                     # w/h of the shape in [1 - j, 1 + j]
    p_border: float = 0.12                          # centre drawn near the border (truncation)
    p_outline: float = 0.3
    p_blur: float = 0.15
    opacity: tuple[float, float] = (0.7, 1.0)
    difficult_visible: float = 0.35
    difficult_size: float = 8.0                     # a box whose longer side is below this is difficult
    jpeg_quality: tuple[int, int] = (75, 95)
    # object fill kinds, relative weights: flat colour, gradient, stripes, photo crop, procedural texture
    fill_weights: tuple[float, float, float, float, float] = (0.35, 0.2, 0.15, 0.18, 0.12)
    p_plain_background: float = 0.0                # flat or two-colour gradient background instead of photo/texture


# Named knob sets. "full" is the data set as designed (tiny objects, crowds, clutter: the paper-like regime where
# capacity shows after long schedules). "cpu" keeps the 12 classes, their details, the backgrounds and the
# distractors but draws fewer, larger objects in smaller scenes, so that quarter-width detectors learn within the
# quarter-hour CPU runs of the capacity and KD-gain benchmarks (the "full" set left a 6-epoch GFL student at 4%
# VOC07 mAP). "easy" goes further, for diagnosis: flat / gradient / striped fills only, half the backgrounds
# plain gradients, few outlines, no blur, crowds or small objects. It did not make 2-epoch CPU models learn the
# classes much faster (quarter-width GFL, AdamW 3e-3: 7.7 VOC07 mAP against 6.2 on "cpu", 2026-12-07): shape
# recognition from scratch, not appearance, is what short CPU schedules lack.
PRESETS: dict[str, dict] = {
    "full": {},
    "cpu": {"side_range": (256, 320), "objects": (2, 6), "distractors": (0, 3), "p_crowd": 0.1,
            "crowd_objects": (4, 8), "crowd_size": (12.0, 28.0), "size_min": 12.0, "size_max_frac": 0.7,
            "size_tail": 1.0, "p_blur": 0.08},
    "easy": {"side_range": (256, 320), "objects": (2, 6), "distractors": (0, 2), "p_crowd": 0.0,
             "size_min": 16.0, "size_max_frac": 0.7, "size_tail": 1.0, "p_blur": 0.0, "p_outline": 0.1,
             "p_border": 0.05, "fill_weights": (0.5, 0.3, 0.2, 0.0, 0.0), "p_plain_background": 0.5},
}


def preset_config(preset: str = "full", knobs: dict | None = None) -> SynthShapesConfig:
    """:class:`SynthShapesConfig` of a named preset with ``knobs`` on top (unknown names fail naming them)."""
    from dataclasses import fields

    if preset not in PRESETS:
        raise ValueError(f"synthshapes: unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    names = {f.name for f in fields(SynthShapesConfig)}
    bad = sorted(set(knobs or {}) - names)
    if bad:
        raise ValueError(f"synthshapes: unknown knob(s) {bad}; known: {', '.join(sorted(names))}")
    merged = {**PRESETS[preset], **(knobs or {})}
    return SynthShapesConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()})


# ----------------------------------------------------------------------------------------- shape geometry
# Each shape is a list of (polygon [k,2] in the unit square [-1, 1]^2, value 1 = paint / 0 = cut out), drawn in
# order; holes and notches are cut out of what was painted before.


def _circle(r: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _regular(k: int, r: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + np.arange(k) * 2 * np.pi / k
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _star(k: int, inner: float) -> np.ndarray:
    t = -np.pi / 2 + np.arange(2 * k) * np.pi / k
    r = np.where(np.arange(2 * k) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _square(r: float = 1.0) -> np.ndarray:
    return np.array([[-r, -r], [r, -r], [r, r], [-r, r]], float)


def shape_parts(name: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """The painted / cut polygons of a class or distractor (a few shape parameters are drawn from ``rng``)."""
    if name == "circle":
        return [(_circle(), 1)]
    if name == "ring":
        return [(_circle(), 1), (_circle(rng.uniform(0.45, 0.7)), 0)]
    if name == "square":
        return [(_square(), 1)]
    if name == "frame":
        return [(_square(), 1), (_square(rng.uniform(0.45, 0.7)), 0)]
    if name == "triangle":
        return [(_regular(3) * [1.0, 1.0] + [0, 0.25], 1)]
    if name == "star5":
        return [(_star(5, rng.uniform(0.4, 0.5)), 1)]
    if name == "star6":
        return [(_star(6, rng.uniform(0.45, 0.55)), 1)]
    if name == "cross":
        a = rng.uniform(0.28, 0.4)
        return [(np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a],
                           [-1, -a], [-a, -a]], float), 1)]
    if name == "hexagon":
        return [(_regular(6, phase=0.0), 1)]
    if name == "pacman":  # a circle with a wedge notch
        half = np.deg2rad(rng.uniform(22, 40))
        t = np.linspace(half, 2 * np.pi - half, 40)
        return [(np.concatenate([[[0.0, 0.0]], np.stack([np.cos(t), np.sin(t)], 1)]), 1)]
    if name == "crescent":
        return [(_circle(), 1), (_circle(rng.uniform(0.75, 0.9), cx=rng.uniform(0.35, 0.55)), 0)]
    if name == "arrow":
        s, h = rng.uniform(0.18, 0.3), rng.uniform(0.1, 0.4)
        return [(np.array([[-1, -s], [h, -s], [h, -0.8], [1, 0], [h, 0.8], [h, s], [-1, s]], float), 1)]
    # distractors
    if name == "blob":  # a smooth potato: low harmonics only (spiky random polygons look like stars)
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        r = 1.0 + sum(rng.uniform(0.08, 0.2) * np.cos(k * t + rng.uniform(0, 2 * np.pi)) for k in (2, 3))
        return [(np.stack([r * np.cos(t), r * np.sin(t)], 1) / r.max(), 1)]
    if name == "star4":
        return [(_star(4, rng.uniform(0.3, 0.5)), 1)]
    if name == "lshape":
        a = rng.uniform(-0.4, 0.2)
        return [(np.array([[-1, -1], [a, -1], [a, a], [1, a], [1, 1], [-1, 1]], float), 1)]
    if name == "semicircle":
        t = np.linspace(0, np.pi, 25)
        return [(np.stack([np.cos(t), 2 * np.sin(t) - 1], 1), 1)]
    if name == "quad":  # a trapezoid with a clearly shorter side (not a rotated rectangle)
        t = rng.uniform(0.15, 0.4)
        return [(np.array([[-t, -1], [t, -1], [1, 1], [-1, 1]], float) + rng.uniform(-0.1, 0.1, (4, 2)), 1)]
    if name == "bar":
        return [(np.array([[-1, -0.12], [1, -0.12], [1, 0.12], [-1, 0.12]], float), 1)]
    raise KeyError(f"unknown shape {name!r}")


def _transform(parts, size: float, aspect: float, angle: float, cx: float, cy: float):
    """Unit-square polygons -> image pixels: scale to ``size`` (longer side), aspect, rotate, translate."""
    sx, sy = (size / 2, size / 2 / aspect) if aspect >= 1 else (size / 2 * aspect, size / 2)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return [((poly * [sx, sy]) @ rot.T + [cx, cy], v) for poly, v in parts]


def rasterize(parts) -> tuple[np.ndarray, int, int]:
    """Anti-aliased coverage ``float32 [h, w]`` in 0..1 of the transformed polygons and its top-left (x0, y0)
    in image pixels (may be negative: the patch is not clipped to the image)."""
    pts = np.concatenate([p for p, _ in parts])
    x0, y0 = int(np.floor(pts[:, 0].min())) - 1, int(np.floor(pts[:, 1].min())) - 1
    x1, y1 = int(np.ceil(pts[:, 0].max())) + 2, int(np.ceil(pts[:, 1].max())) + 2
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for poly, v in parts:
        fixed = np.round((poly - [x0, y0]) * (1 << _SUB)).astype(np.int32)
        cv2.fillPoly(mask, [fixed], 255 * v, lineType=cv2.LINE_AA, shift=_SUB)
    return mask.astype(np.float32) / 255, x0, y0


# --------------------------------------------------------------------------------------------- appearance


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    t = rng.uniform(0, np.pi)
    u = (xx * np.cos(t) + yy * np.sin(t)) / max(h, w, 1)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return (c0 + (c1 - c0) * u[..., None]).astype(np.float32)


def _fill(rng: np.random.Generator, h: int, w: int, weights=SynthShapesConfig.fill_weights) -> np.ndarray:
    """Object paint ``float32 [h, w, 3]``: colour and texture, drawn independently of the class."""
    kind = rng.random()
    edges = np.cumsum(weights) / sum(weights)
    if kind < edges[0]:
        img = np.ones((h, w, 3), np.float32) * rng.uniform(0, 255, 3).astype(np.float32)
    elif kind < edges[1]:
        img = _gradient(rng, h, w)
    elif kind < edges[2]:
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        t = rng.uniform(0, np.pi)
        period = rng.uniform(3, 14)
        wave = (np.sin((xx * np.cos(t) + yy * np.sin(t)) * 2 * np.pi / period) > 0).astype(np.float32)
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = (c0 + (c1 - c0) * wave[..., None]).astype(np.float32)
    elif kind < edges[3]:
        img = _photo_crop(rng, h, w)
    else:
        side = max(h, w, 8)
        img = _procedural(rng, side)[:h, :w]
    return np.ascontiguousarray(img, dtype=np.float32)


def _photo_crop(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``float32 [h, w, 3]``: a random square crop (40–100 % of the short side) of a ``PHOTOS`` image, resized."""
    img = _photos(512 if max(h, w) > 96 else 128)[PHOTOS[int(rng.integers(len(PHOTOS)))]]
    ph, pw = img.shape[:2]
    side = int(rng.uniform(0.4, 1.0) * min(ph, pw))
    y, x = int(rng.integers(ph - side + 1)), int(rng.integers(pw - side + 1))
    crop = cv2.resize(img[y : y + side, x : x + side], (w, h), interpolation=cv2.INTER_AREA)
    return (crop[:, ::-1] if rng.integers(2) else crop).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int, p_plain: float = 0.0) -> np.ndarray:
    """``float32 [h, w, 3]``: a photo crop and/or a procedural texture (made at half size, then upscaled, plus
    full-size pixel noise), colour-jittered. Unlike SynthFaces no random rectangles / ellipses are drawn:
    those would be unlabelled look-alikes of the classes (distractor shapes play that role). With chance ``p_plain``
    (no draw when 0) a plain gradient with pixel noise instead."""
    if p_plain > 0 and rng.random() < p_plain:
        return np.clip(_gradient(rng, h, w) + _noise(rng, (h, w, 1), rng.uniform(2, 8)), 0, 255, dtype=np.float32)
    u = rng.random()
    if u < 0.75:
        img = _photo_crop(rng, h, w)
    if u >= 0.55:
        side = max(h, w) // 2
        proc = cv2.resize(_procedural(rng, side), (w, h), interpolation=cv2.INTER_LINEAR)
        proc += _noise(rng, (h, w, 1), rng.uniform(2, 10))
        img = proc if u >= 0.75 else 0.6 * img + 0.4 * proc
    gain, bias = rng.uniform(0.7, 1.2, 3).astype(np.float32), rng.uniform(-20, 20, 3).astype(np.float32)
    return np.clip(img * gain + bias, 0, 255, dtype=np.float32)


def _paint(img: np.ndarray, owner: np.ndarray, parts, ident: int, rng: np.random.Generator,
           cfg: SynthShapesConfig) -> tuple[int, int, bool, tuple[int, int, int, int]]:
    """Blend one shape into ``img`` and mark ``owner`` where its coverage > 0.5. Returns ``(pixels inside the
    image, pixels in total, touches the border, (x0, y0, x1, y1) the patch clipped to the image)`` of its
    coverage mask."""
    cov, x0, y0 = rasterize(parts)
    ph, pw = cov.shape
    total = int((cov > 0.5).sum())
    H, W = img.shape[:2]
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + pw, W), min(y0 + ph, H)
    if ix0 >= ix1 or iy0 >= iy1:
        return 0, total, True, (0, 0, 0, 0)
    paint = _fill(rng, ph, pw, cfg.fill_weights)
    if rng.random() < cfg.p_outline:
        k = max(1, int(round(min(ph, pw) * rng.uniform(0.03, 0.06))))  # thinner than a frame's border
        inner = cv2.erode((cov > 0.5).astype(np.uint8), np.ones((2 * k + 1, 2 * k + 1), np.uint8))
        edge = (cov > 0.5) & (inner == 0)
        paint[edge] = rng.uniform(0, 255, 3).astype(np.float32)
    alpha = cov * np.float32(rng.uniform(*cfg.opacity))
    if rng.random() < cfg.p_blur:
        sigma = max(0.5, min(ph, pw) * rng.uniform(0.02, 0.06))
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
        paint = cv2.GaussianBlur(paint, (0, 0), sigma)
    sl = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    a = alpha[sl][..., None]
    region = img[iy0:iy1, ix0:ix1]
    region[:] = a * paint[sl] + (1 - a) * region
    inside = cov[sl] > 0.5
    owner[iy0:iy1, ix0:ix1][inside] = ident
    return int(inside.sum()), total, bool(inside.sum() < total), (ix0, iy0, ix1, iy1)


def _object_size(rng: np.random.Generator, cfg: SynthShapesConfig, short: int) -> float:
    hi = cfg.size_max_frac * short
    return float(cfg.size_min * (hi / cfg.size_min) ** (rng.random() ** cfg.size_tail))


def render_scene(rng: np.random.Generator, cfg: SynthShapesConfig = SynthShapesConfig()):
    """One scene: ``(image uint8 [H, W, 3] RGB, objects)`` with objects ``{"label" 1..K, "box" continuous
    xyxy [4], "difficult", "truncated", "visible"}``."""
    lo, hi = cfg.side_range
    W, H = (int(rng.integers(lo // 32, hi // 32 + 1)) * 32 for _ in range(2))
    img = np.ascontiguousarray(_background(rng, H, W, cfg.p_plain_background))
    owner = np.zeros((H, W), np.int32)
    short = min(H, W)
    n_obj = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    n_dis = int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))
    placed = []  # (is_object, size, cx, cy)
    for is_obj in [True] * n_obj + [False] * n_dis:
        size = _object_size(rng, cfg, short)
        if rng.random() < cfg.p_border:
            cx, cy = (rng.choice([rng.uniform(-0.3, 0.1), rng.uniform(0.9, 1.3)]) * d if rng.random() < 0.5
                      else rng.uniform(0, d) for d in (W, H))
        else:
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        placed.append((is_obj, size, float(cx), float(cy)))
    if rng.random() < cfg.p_crowd:
        ccx, ccy = rng.uniform(0.15, 0.85) * W, rng.uniform(0.15, 0.85) * H
        spread = rng.uniform(15, 60)
        for _ in range(int(rng.integers(cfg.crowd_objects[0], cfg.crowd_objects[1] + 1))):
            size = float(rng.uniform(*cfg.crowd_size))
            placed.append((rng.random() < 0.85, size, float(ccx + rng.normal(0, spread)),
                           float(ccy + rng.normal(0, spread))))
    placed.sort(key=lambda p: -p[1] * rng.uniform(0.5, 1.5))  # big shapes mostly first, small ones on top
    shapes = []
    for ident, (is_obj, size, cx, cy) in enumerate(placed, 1):
        if is_obj:
            label = int(rng.integers(len(SYNTHSHAPES_CLASSES))) + 1
            name = SYNTHSHAPES_CLASSES[label - 1]
        else:
            label, name = 0, DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
        j = cfg.aspect_jitter
        parts = _transform(shape_parts(name, rng), size, float(rng.uniform(1 - j, 1 + j)),
                           float(rng.uniform(0, 2 * np.pi)), cx, cy)
        shapes.append((label, *_paint(img, owner, parts, ident, rng, cfg)))
    objects = []
    for ident, (label, inside, total, truncated, (x0, y0, x1, y1)) in enumerate(shapes, 1):
        if label == 0 or inside == 0:
            continue
        ys, xs = np.nonzero(owner[y0:y1, x0:x1] == ident)  # later shapes only ever take pixels away
        if len(xs) == 0:
            continue
        box = np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1], np.float64)
        visible = len(xs) / max(total, 1)
        longer = max(box[2] - box[0], box[3] - box[1])
        objects.append({"label": label, "box": box, "truncated": bool(truncated), "visible": float(visible),
                        "difficult": bool(visible < cfg.difficult_visible or longer < cfg.difficult_size)})
    return np.clip(img, 0, 255).astype(np.uint8), objects


# ------------------------------------------------------------------------------------------------ writing


def _scene_id(split: str, i: int) -> str:
    return f"{SPLITS[split] + 1}{i:06d}"


def _voc_xml(image_id: str, w: int, h: int, objects) -> str:
    parts = [f"<annotation>\n\t<folder>SynthShapes</folder>\n\t<filename>{image_id}.jpg</filename>\n"
             f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>\n"]
    for o in objects:
        x1, y1, x2, y2 = (int(v) for v in o["box"])
        parts.append(f"\t<object>\n\t\t<name>{SYNTHSHAPES_CLASSES[o['label'] - 1]}</name>\n"
                     f"\t\t<truncated>{int(o['truncated'])}</truncated>\n\t\t<difficult>{int(o['difficult'])}"
                     f"</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{x1 + 1}</xmin>\n\t\t\t<ymin>{y1 + 1}</ymin>\n"
                     f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def _make_scene(args) -> tuple[str, int, int, list[dict]]:
    """Render and write one scene (a worker job); returns what the COCO file needs."""
    out, seed, split, i, cfg = args
    rng = np.random.default_rng([seed, SPLITS[split], i])
    image, objects = render_scene(rng, cfg)
    image_id = _scene_id(split, i)
    h, w = image.shape[:2]
    q = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
    if not cv2.imwrite(str(out / "JPEGImages" / f"{image_id}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                       [cv2.IMWRITE_JPEG_QUALITY, q]):
        raise OSError(f"cannot write {out / 'JPEGImages' / image_id}.jpg")
    (out / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(image_id, w, h, objects))
    return image_id, w, h, [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in o.items()}
                            for o in objects]


def _coco(scenes) -> dict:
    images, anns = [], []
    for image_id, w, h, objects in scenes:
        images.append({"id": int(image_id), "file_name": f"{image_id}.jpg", "width": w, "height": h})
        for o in objects:
            x1, y1, x2, y2 = o["box"]
            ann = {"id": len(anns) + 1, "image_id": int(image_id), "category_id": o["label"],
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                   "iscrowd": int(o["difficult"]), "truncated": int(o["truncated"])}
            if o["difficult"]:
                ann["difficult"] = 1
            anns.append(ann)
    cats = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(SYNTHSHAPES_CLASSES)]
    return {"images": images, "annotations": anns, "categories": cats}


def _info(seed: int, n_train: int, n_val: int, cfg: SynthShapesConfig) -> dict:
    return {"version": VERSION, "seed": seed, "n_train": n_train, "n_val": n_val,
            "config": json.loads(json.dumps(asdict(cfg)))}


def write_synthshapes(out_dir: str | Path, seed: int = 0, n_train: int = 1500, n_val: int = 500,
                      cfg: SynthShapesConfig | None = None, workers: int | None = None) -> Path:
    """Write SynthShapes (module docstring layout) under ``out_dir``; ``workers`` processes (default: up to 2)."""
    cfg = cfg or SynthShapesConfig()
    out = Path(out_dir)
    for d in ("Annotations", "JPEGImages", "ImageSets/Main", "annotations"):
        (out / d).mkdir(parents=True, exist_ok=True)
    workers = workers or min(2, os.cpu_count() or 1)
    counts = {}
    for split, n in (("train", n_train), ("val", n_val)):
        jobs = [(out, seed, split, i, cfg) for i in range(n)]
        if workers > 1 and n > 50:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers, _worker_init) as pool:
                scenes = pool.map(_make_scene, jobs, chunksize=16)
        else:
            scenes = [_make_scene(j) for j in jobs]
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(s[0] + "\n" for s in scenes))
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(_coco(scenes)))
        objs = [o for s in scenes for o in s[3]]
        counts[split] = {"images": n, "objects": len(objs), "difficult": sum(o["difficult"] for o in objs)}
    info = _info(seed, n_train, n_val, cfg) | {"counts": counts}
    (out / "synthshapes.json").write_text(json.dumps(info, indent=1) + "\n")
    return out


def _worker_init() -> None:
    cv2.setNumThreads(1)


def ensure_synthshapes(root: str | Path, seed: int = 0, n_train: int = 1500, n_val: int = 500,
                       cfg: SynthShapesConfig | None = None) -> Path:
    """Write SynthShapes at ``root`` unless a copy with the same parameters is already there."""
    root = Path(root)
    cfg = cfg or SynthShapesConfig()
    stamp = root / "synthshapes.json"
    if stamp.is_file():
        have = json.loads(stamp.read_text())
        have.pop("counts", None)
        # a knob added after the data was written was at its default then (defaults keep the scenes identical)
        have["config"] = {**json.loads(json.dumps(asdict(SynthShapesConfig()))), **have.get("config", {})}
        if have == _info(seed, n_train, n_val, cfg):
            return root
        raise UserError(stamp_mismatch("SynthShapes", stamp, have, _info(seed, n_train, n_val, cfg)),
                        key="data.root", path=root)
    return write_synthshapes(root, seed, n_train, n_val, cfg)


@register("dataset")
def synthshapes(*, root: str, split: str = "train", img_size: int = 320, short: list[int] | None = None,
                max_long: int = 512,
                augment: bool = True, train_difficult: bool = False, seed: int = 0, data_seed: int = 0,
                n_train: int = 1500, n_val: int = 500, preset: str = "full", knobs: dict | None = None):
    """SynthShapes (written to ``root`` on first use, then read through the VOC reader). ``split="train"``:
    training samples, short side (320..512) resized to ``short`` (default ``(img_size,)``; several =
    multi-scale), long side capped at ``max_long``. ``split="val"``: the evaluation view
    (``DetectionEvalSet``: original-size uint8 images, the inference protocol resizes). ``preset`` picks a named
    knob set (``PRESETS``: ``full`` or ``cpu``); ``knobs`` overrides :class:`SynthShapesConfig` fields on top, e.g.
    ``{"objects": (4, 12), "size_tail": 2.0}`` (a root remembers its knobs and refuses others)."""
    from detkd.data.detection import DetectionEvalSet
    from detkd.data.voc import VOCDetection, read_voc

    if split not in SPLITS:
        raise ValueError(f"synthshapes: unknown split {split!r} (expected 'train' or 'val')")
    cfg = preset_config(preset, knobs)
    ensure_synthshapes(root, data_seed, n_train, n_val, cfg)
    if split == "val":
        return DetectionEvalSet(read_voc(root, "val", SYNTHSHAPES_CLASSES), SYNTHSHAPES_CLASSES,
                                ann_file=Path(root) / "annotations" / "instances_val.json")
    return VOCDetection(root, split, SYNTHSHAPES_CLASSES, resize=ResizeConfig(tuple(short or (img_size,)), max_long),
                        augment=augment, train_difficult=train_difficult, seed=seed)
