"""Face-detection training augmentation of METHODS.md §1.5, the fixed-size validation resize, and the
keep-ratio resize of mmdet-style recipes (``resize_keep_ratio``: short side -> S unless the long side would
pass L; the batch is then padded to a multiple of 32 by ``detkd.data.loader.collate_detection``).

Conventions
-----------
* Images are ``uint8 [H, W, 3]`` numpy arrays in **RGB** order until the final step, which returns
  ``float32 [3, S, S]`` (RGB, 0..255, no mean subtracted: models own normalisation).
* Boxes are ``float32 [N, 4]`` x1, y1, x2, y2 in pixels of the current image; landmarks ``float32 [N, 5, 2]``
  (x, y); ``landmarks_valid`` ``bool [N]``. Landmarks of invalid faces are carried through the geometry
  unchanged in meaning (the flag decides whether they are used).
* Every random draw comes from the ``np.random.Generator`` passed in, in a fixed order, so a sample is a pure
  function of the generator's seed (the datasets seed it with ``(seed, epoch, index)``).

Pipeline (in order, exactly as the reference ``preproc``):
1. ``random_square_crop``  IoF-constrained square crop, up to 250 tries; on failure the full image is kept and
                           flagged for padding.
2. ``photometric_distort`` brightness / contrast / saturation / hue, two random orders, each sub-op p = 1/2.
3. ``pad_to_square``       only when the crop failed; filled with the mean colour (123, 117, 104) RGB.
4. ``random_hflip``        p = 1/2; landmark pairs 0<->1 and 3<->4 swapped.
5. ``resize_sample``       to S x S with a random interpolation among {linear, cubic, area, nearest, lanczos4};
                           boxes and landmarks scaled by S / (square side).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from detkd.data.image import resize_square, to_chw_float

MEAN_RGB = (123, 117, 104)  # the reference's BGR mean (104, 117, 123) in RGB order
INTERPOLATIONS = (cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_AREA, cv2.INTER_NEAREST, cv2.INTER_LANCZOS4)
CROP_TRIES = 250
FLIP_LANDMARK_ORDER = (1, 0, 2, 4, 3)  # left eye <-> right eye, left mouth <-> right mouth


def _iof(boxes: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Intersection over the area of each box (no +1), ``[N]``."""
    lt = np.maximum(boxes[:, :2], roi[:2])
    rb = np.minimum(boxes[:, 2:], roi[2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area, 1e-12)


def random_square_crop(image, boxes, landmarks, valid, rng: np.random.Generator, tries: int = CROP_TRIES):
    """§1.5 step 1. Returns ``(image, boxes, landmarks, valid, needs_pad)``.

    scale = 1 w.p. 0.2 else U(0.3, 1); side = int(scale * min(H, W)); top-left by randrange. A try is accepted
    iff some GT lies fully inside (IoF >= 1) and at least one GT centre is strictly inside the crop.
    """
    h, w = image.shape[:2]
    if len(boxes) == 0:
        return image, boxes, landmarks, valid, True
    short = min(h, w)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2]
    for _ in range(tries):
        scale = 1.0 if rng.random() < 0.2 else rng.uniform(0.3, 1.0)
        side = int(scale * short)
        left = 0 if w == side else int(rng.integers(w - side))
        top = 0 if h == side else int(rng.integers(h - side))
        roi = np.array([left, top, left + side, top + side], dtype=np.float32)
        if not (_iof(boxes, roi) >= 1).any():
            continue
        inside = ((roi[:2] < centres) & (centres < roi[2:])).all(axis=1)
        if not inside.any():
            continue
        b = boxes[inside].copy()
        b[:, :2] = np.maximum(b[:, :2], roi[:2]) - roi[:2]
        b[:, 2:] = np.minimum(b[:, 2:], roi[2:]) - roi[:2]
        lm = np.clip(landmarks[inside] - roi[:2], 0, side).astype(np.float32)
        crop = image[top : top + side, left : left + side]
        return crop, b, lm, valid[inside].copy(), False
    return image, boxes, landmarks, valid, True


def _affine(channel: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> None:
    """In place ``channel = clip(channel * alpha + beta)`` with uint8 truncation, as the reference ``_convert``."""
    channel[:] = np.clip(channel.astype(np.float64) * alpha + beta, 0, 255)


def photometric_distort(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """§1.5 step 2 on a uint8 RGB image (a new array is returned)."""
    image = image.copy()

    def brightness():
        if rng.integers(2):
            _affine(image, beta=rng.uniform(-32, 32))

    def contrast():
        if rng.integers(2):
            _affine(image, alpha=rng.uniform(0.5, 1.5))

    def hsv_ops(img):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # hue in [0, 180)
        if rng.integers(2):
            _affine(hsv[:, :, 1], alpha=rng.uniform(0.5, 1.5))
        if rng.integers(2):
            hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int64) + int(rng.integers(-18, 19))) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    if rng.integers(2):
        brightness()
        contrast()
        image = hsv_ops(image)
    else:
        brightness()
        image = hsv_ops(image)
        contrast()
    return image


def pad_to_square(image: np.ndarray, fill=MEAN_RGB) -> np.ndarray:
    """§1.5 step 3: put the image at the top-left of a (long side)^2 canvas of colour ``fill``."""
    h, w = image.shape[:2]
    side = max(h, w)
    out = np.empty((side, side, 3), dtype=image.dtype)
    out[:] = np.asarray(fill, dtype=image.dtype)
    out[:h, :w] = image
    return out


def random_hflip(image, boxes, landmarks, rng: np.random.Generator):
    """§1.5 step 4: p = 1/2 mirror; x -> W - x, landmark pairs 0<->1 and 3<->4 swapped."""
    if not rng.integers(2):
        return image, boxes, landmarks
    h, w = image.shape[:2]
    flipped = TF.horizontal_flip_bounding_boxes(
        torch.from_numpy(boxes), format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(h, w)
    )
    lm = landmarks.copy()
    lm[:, :, 0] = w - lm[:, :, 0]
    lm = lm[:, FLIP_LANDMARK_ORDER]
    return np.ascontiguousarray(image[:, ::-1]), flipped.numpy().astype(np.float32), lm


def resize_sample(image, boxes, landmarks, size: int, interpolation: int):
    """§1.5 step 5 on a square image: resize to ``size``^2, scale boxes/landmarks by size / side."""
    h, w = image.shape[:2]
    out = resize_square(image, size, interpolation)
    resized, _ = TF.resize_bounding_boxes(torch.from_numpy(boxes), canvas_size=(h, w), size=[size, size])
    lm = landmarks * np.array([size / w, size / h], dtype=np.float32)
    return out, resized.numpy().astype(np.float32), lm.astype(np.float32)


def keep_ratio_scale(height: int, width: int, short: int, max_long: int | None = None) -> float:
    """``min(short / short side, max_long / long side)``: the mmdet ``keep_ratio`` scale for ``(short, max_long)``
    (e.g. ``(800, 1333)`` COCO, ``(600, 1000)`` VOC)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"keep_ratio_scale: empty image {height}x{width}")
    scale = short / min(height, width)
    if max_long is not None:
        scale = min(scale, max_long / max(height, width))
    return scale


def resize_keep_ratio(image: np.ndarray, boxes: np.ndarray, landmarks: np.ndarray | None, short: int,
                      max_long: int | None = None, interpolation: int = cv2.INTER_LINEAR):
    """Resize keeping the aspect ratio (``keep_ratio_scale``); new size ``(int(h·s + 0.5), int(w·s + 0.5))``
    as mmcv's ``rescale_size``. Boxes and landmarks are scaled by the actual ``new_w / w`` and ``new_h / h``.

    Returns ``(image [h', w', 3], boxes [N, 4], landmarks [N, 5, 2] | None, (sy, sx))``.
    """
    h, w = image.shape[:2]
    scale = keep_ratio_scale(h, w, short, max_long)
    nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    out = cv2.resize(image, (nw, nh), interpolation=interpolation)
    sx, sy = nw / w, nh / h
    boxes = torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4))
    boxes, _ = TF.resize_bounding_boxes(boxes, canvas_size=(h, w), size=[nh, nw])
    if landmarks is not None:
        landmarks = (np.asarray(landmarks, np.float32) * np.array([sx, sy], np.float32)).astype(np.float32)
    return out, boxes.numpy().astype(np.float32), landmarks, (sy, sx)


def train_transform(image, boxes, landmarks, valid, size: int, rng: np.random.Generator):
    """The full §1.5 pipeline. Returns ``(image float32 [3,S,S], boxes [N,4], landmarks [N,5,2], valid [N])``."""
    image, boxes, landmarks, valid, needs_pad = random_square_crop(image, boxes, landmarks, valid, rng)
    image = photometric_distort(image, rng)
    if needs_pad:
        image = pad_to_square(image)
    image, boxes, landmarks = random_hflip(image, boxes, landmarks, rng)
    interp = INTERPOLATIONS[int(rng.integers(len(INTERPOLATIONS)))]
    image, boxes, landmarks = resize_sample(image, boxes, landmarks, size, interp)
    return to_chw_float(image), boxes, landmarks, valid


def plain_transform(image, boxes, landmarks, valid, size: int):
    """No augmentation: pad to square with the mean colour, bilinear resize to S x S."""
    image = pad_to_square(image)
    image, boxes, landmarks = resize_sample(image, boxes, landmarks, size, cv2.INTER_LINEAR)
    return to_chw_float(image), boxes, landmarks, valid


def resize_eval(image: np.ndarray, size: int) -> tuple[torch.Tensor, float]:
    """Fixed-size validation input: keep the aspect ratio, long side -> ``size``, pad bottom/right with the
    mean colour. Returns ``(float32 [3, size, size], scale)``; original pixel = input pixel / scale."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = np.asarray(MEAN_RGB, dtype=np.uint8)
    canvas[:nh, :nw] = resized
    return to_chw_float(canvas), scale
