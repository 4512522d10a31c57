"""Reading and decoding images: one place, errors that name the file (or what was decoded)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


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
