"""The annotated-image record every detection reader (VOC, COCO, SynthShapes) produces, without torch, so that
the file evaluators (``detkd eval voc|coco``) and ``detkd convert voc2coco`` start fast. Re-exported by
``detkd.data.detection``, whose docstring gives the box convention (continuous pixel xyxy).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class DetRecord:
    """One annotated image. ``boxes [n,4]`` float64 continuous xyxy in original pixels, ``labels [n]`` int64
    (1..K), ``difficult [n]`` bool, ``crowd [n]`` bool (an ignore region, never a training object),
    ``truncated [n]`` bool. ``image_id`` is the VOC file stem or the COCO integer id."""

    image_id: str | int
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    crowd: np.ndarray
    truncated: np.ndarray = field(default=None)

    def __post_init__(self):
        n = len(self.labels)
        self.boxes = np.asarray(self.boxes, np.float64).reshape(n, 4)
        self.labels = np.asarray(self.labels, np.int64).reshape(n)
        self.difficult = np.asarray(self.difficult, bool).reshape(n)
        self.crowd = np.asarray(self.crowd, bool).reshape(n)
        self.truncated = np.zeros(n, bool) if self.truncated is None else np.asarray(self.truncated, bool).reshape(n)

    def split(self, train_difficult: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(boxes [N,4], labels [N], ignore_boxes [M,4])``: crowd regions always go to ``ignore_boxes``,
        difficult objects too unless ``train_difficult``."""
        ignore = self.crowd | (self.difficult & (not train_difficult))
        return self.boxes[~ignore], self.labels[~ignore], self.boxes[ignore]
