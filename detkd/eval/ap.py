"""Average precision from a precision-recall curve, shared by the WIDER FACE and VOC evaluators."""
from __future__ import annotations

import numpy as np


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC-2010 "area" AP: sentinels, right-to-left ``np.maximum`` envelope (NaN propagates), sum.

    ``rec``, ``prec``: float ``[T]`` recall and precision at decreasing score thresholds (recall ascending).
    """
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))
