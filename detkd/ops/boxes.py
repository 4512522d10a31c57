"""Box conversions, IoU and the SSD/RetinaFace box and landmark coders.

Conventions:

* ``xyxy``   ``[..., 4]`` x1, y1, x2, y2 in pixels (continuous coordinates, area = (x2-x1)(y2-y1)).
* ``cxcywh`` ``[..., 4]`` centre x, centre y, width, height (RetinaFace priors use this form).
* The "+1" pixel convention (old Caffe/MATLAB code, WIDER evaluation, ``py_cpu_nms``) treats x2/y2 as the
  last pixel *inside* the box: width = x2 - x1 + 1. ``box_iou_plus1`` implements it.
* Coders follow SSD with variances ``(v0, v1)`` (RetinaFace: 0.1, 0.2):
  ``t_xy = (g_c - p_c) / (v0 * p_wh)``, ``t_wh = log(g_wh / p_wh) / v1``; landmarks ``(l - p_c) / (v0 * p_wh)``.
  Coders accept priors and boxes in any common scale (normalised or pixels); the codes are scale-free.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert, box_iou

__all__ = [
    "cxcywh_to_xyxy",
    "xyxy_to_cxcywh",
    "box_iou",
    "box_iou_plus1",
    "encode_boxes",
    "decode_boxes",
    "encode_landmarks",
    "decode_landmarks",
]

# Widths/heights below this are clamped before the log in ``encode_boxes`` so degenerate GT boxes
# (w = 0, which exist in WIDER) give a large but finite regression target instead of -inf.
_MIN_WH = 1e-6


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:  # [..., 4] -> [..., 4]
    return box_convert(boxes, "cxcywh", "xyxy")


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:  # [..., 4] -> [..., 4]
    return box_convert(boxes, "xyxy", "cxcywh")


def box_iou_plus1(a: Tensor, b: Tensor) -> Tensor:
    """IoU ``[N, M]`` of xyxy boxes with the inclusive "+1" pixel convention (0 where they do not overlap)."""
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)  # [N]
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)  # [M]
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # [N, M, 2]
    wh = (rb - lt + 1).clamp(min=0)  # [N, M, 2]
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def encode_boxes(matched: Tensor, priors: Tensor, variance: tuple[float, float]) -> Tensor:
    """Regression targets ``[P, 4]`` for xyxy boxes ``matched [P, 4]`` against cxcywh ``priors [P, 4]``."""
    g_c = (matched[:, :2] + matched[:, 2:]) / 2
    g_wh = (matched[:, 2:] - matched[:, :2]).clamp(min=_MIN_WH)
    t_xy = (g_c - priors[:, :2]) / (variance[0] * priors[:, 2:])
    t_wh = torch.log(g_wh / priors[:, 2:]) / variance[1]
    return torch.cat([t_xy, t_wh], dim=1)


def decode_boxes(loc: Tensor, priors: Tensor, variance: tuple[float, float]) -> Tensor:
    """xyxy boxes ``[..., P, 4]`` from regression outputs ``loc [..., P, 4]`` and cxcywh ``priors [P, 4]``.

    Same arithmetic as the reference: corners are ``c - wh/2`` and ``(c - wh/2) + wh``.
    """
    c = priors[..., :2] + loc[..., :2] * variance[0] * priors[..., 2:]
    wh = priors[..., 2:] * torch.exp(loc[..., 2:] * variance[1])
    x1y1 = c - wh / 2
    return torch.cat([x1y1, x1y1 + wh], dim=-1)


def encode_landmarks(landmarks: Tensor, priors: Tensor, variance: tuple[float, float]) -> Tensor:
    """Landmark targets ``[P, 10]`` (x1, y1, ..., x5, y5) from points ``[P, 5, 2]`` and cxcywh ``priors [P, 4]``."""
    t = (landmarks - priors[:, None, :2]) / (variance[0] * priors[:, None, 2:])  # [P, 5, 2]
    return t.flatten(1)


def decode_landmarks(landm: Tensor, priors: Tensor, variance: tuple[float, float]) -> Tensor:
    """Points ``[..., P, 5, 2]`` from landmark outputs ``landm [..., P, 10]`` and cxcywh ``priors [P, 4]``."""
    pts = landm.unflatten(-1, (5, 2))  # [..., P, 5, 2]
    return priors[..., None, :2] + pts * variance[0] * priors[..., None, 2:]
