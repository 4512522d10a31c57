"""Reading, decoding and converting images: one place, errors that name the file (or what was decoded).

Also decoding of in-memory bytes, square resizing and HWC uint8 -> CHW float conversion.

A truncated JPEG (no end-of-image marker and a decoder that runs out of data) still decodes with OpenCV, with
the missing part grey; ``read_image`` logs a warning naming the file (once per file and process), or raises
``TruncatedImageError`` when ``strict=True`` (or the environment sets ``DETKD_STRICT_IMAGES=1``, which lets a
command-line ``--strict`` flag reach every reader).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from detkd.errors import UserError

__all__ = ["read_image", "jpeg_is_truncated", "TruncatedImageError", "STRICT_ENV", "decode_image", "resize_square",
           "to_chw_float"]

log = logging.getLogger(__name__)
STRICT_ENV = "DETKD_STRICT_IMAGES"
_TAIL = 4096  # bytes searched for the JPEG end-of-image marker before decoding to confirm
_warned: set[str] = set()


class TruncatedImageError(UserError):
    pass


def jpeg_is_truncated(path: str | Path) -> bool:
    """True when ``path`` is a JPEG that ends before its end-of-image marker (a cut download or copy).

    Cheap test first (is ``FF D9`` in the last 4 KiB?); files that fail it are decoded with Pillow, which
    tells a cut file (``OSError``) from one with data appended after the marker (decodes fine)."""
    path = Path(path)
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False  # not a JPEG
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - _TAIL))
        if b"\xff\xd9" in f.read():
            return False
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except OSError:
        return True
    return False


def read_image(path: str | Path, strict: bool | None = None) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB via OpenCV (the reference pipelines' decoder).

    Raises ``FileNotFoundError`` / ``IsADirectoryError`` / ``UserError`` (a ``ValueError``) naming the file
    when it is missing, a directory or not decodable; a truncated JPEG warns (``strict``: raises ``TruncatedImageError``).
    ``strict=None`` reads ``DETKD_STRICT_IMAGES`` (``1`` / ``true`` = strict).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, expected an image file")
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"cannot decode image (corrupt or not an image): {path}", path=path)
    if path.suffix.lower() in (".jpg", ".jpeg", ".jpe", ".jfif") and jpeg_is_truncated(path):
        if strict is None:
            strict = os.environ.get(STRICT_ENV, "").lower() in ("1", "true", "yes", "on")
        if strict:
            raise TruncatedImageError(f"{path}: truncated JPEG (the file ends before its end-of-image marker)",
                                      path=path)
        if str(path) not in _warned:
            _warned.add(str(path))
            log.warning("%s: truncated JPEG (the file ends before its end-of-image marker); the missing part "
                        "decodes as grey", path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_image(data: bytes | np.ndarray, what: str) -> np.ndarray:
    """Encoded bytes -> uint8 [H, W, 3] RGB; ValueError naming ``what`` when it cannot be decoded."""
    buf = np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if image is None:
        raise ValueError(f"cannot decode {what} (corrupt or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def resize_square(image: np.ndarray, size: int, interpolation: int | None = None) -> np.ndarray:
    """Resize [H, W, 3] to [size, size, 3] with ``interpolation`` (a ``cv2.INTER_*`` flag). ``None``: area when
    shrinking, bilinear when enlarging, and the image itself when it already has that size."""
    if interpolation is None:
        h, w = image.shape[:2]
        if (h, w) == (size, size):
            return image
        interpolation = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def to_chw_float(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] (channels kept, 0..255)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
