"""Reading and decoding images: one place, errors that name the file (or what was decoded).

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

from detkd.errors import UserError

__all__ = ["read_image", "jpeg_is_truncated", "TruncatedImageError", "STRICT_ENV"]

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

    Raises ``FileNotFoundError`` / ``IsADirectoryError`` / ``UserError`` (a ``ValueError``) naming the file when it is missing, a
    directory or not decodable; a truncated JPEG warns (``strict``: raises ``TruncatedImageError``).
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
