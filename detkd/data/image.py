"""Reading, decoding and converting images: one place, errors that name the file (or what was decoded)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch


def read_image(path: str | Path) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB via OpenCV (the reference pipelines' decoder).

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing or not decodable.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode image (corrupt or not an image): {path}")
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
