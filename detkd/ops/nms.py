"""Greedy NMS with the classic "+1" pixel convention, reproducing ``py_cpu_nms`` on torchvision's kernel.

``py_cpu_nms`` (biubug6 / TDKD / py-faster-rcnn) sorts by score with ``argsort()[::-1]``, keeps the top box,
suppresses every remaining box whose IoU with it is ``> thresh`` and repeats; areas and intersections use
``x2 - x1 + 1``. ``nms_plus1`` gives the same keep list:

* Geometry. Shifting ``x2, y2`` by +1 makes torchvision's continuous formula
  ``(min(x2+1, x2'+1) - max(x1, x1'))`` equal ``min(x2, x2') - max(x1, x1') + 1`` and areas equal
  ``(x2 - x1 + 1)(y2 - y1 + 1)``; the clamp at 0 is the same ``max(0, .)``. The shift and the whole kernel run
  in float64: a float32 coordinate + 1 is exact in float64, so the shift itself never rounds.
* Threshold. Both compare the IoU with ``>`` (suppress) / ``<=`` (keep).
* Order. torchvision sorts descending with a stable sort (ties: lower index first), the reference reverses an
  ascending sort (ties: higher index first, with a stable ascending sort). We replace the scores by their rank
  in the reference order, so torchvision visits boxes in exactly the reference order.
* Rounding. For integer coordinates (and any coordinates whose sums are exact) both compute the same IoU
  rationals; an IoU equal to the threshold (e.g. 2/5 at 0.4) is kept by both. For arbitrary float32 boxes the
  reference rounds every intermediate to float32 while we compute in float64, so a pair whose IoU lies within
  one float32 ulp (~3e-8) of the threshold may be decided differently (the float64 decision is the exact one).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms as tv_nms


def reference_order(scores: Tensor) -> Tensor:
    """Indices in ``np.argsort(scores, kind="stable")[::-1]`` order: descending, ties by higher index first."""
    return torch.argsort(scores, stable=True).flip(0)


def nms_plus1(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices (int64 ``[K]``, in visiting order = descending score) kept by greedy "+1" NMS of ``boxes [N, 4]``."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    b = boxes.detach().to(torch.float64)
    b = torch.cat([b[:, :2], b[:, 2:] + 1.0], dim=1)  # [N, 4]
    order = reference_order(scores.detach())
    rank_score = torch.empty(order.numel(), dtype=torch.float64, device=boxes.device)
    rank_score[order] = torch.arange(order.numel(), 0, -1, dtype=torch.float64, device=boxes.device)
    return tv_nms(b, rank_score, float(iou_threshold))


def nms_plus1_reference(boxes, scores, iou_threshold: float) -> list[int]:
    """Straightforward per-box greedy loop (numpy, float64), the specification ``nms_plus1`` is tested against."""
    import numpy as np

    b = np.asarray(boxes, dtype=np.float64)
    s = np.asarray(scores)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(s, kind="stable")[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[ovr <= iou_threshold]
    return keep
