"""Generalized Focal Loss math (mmdet v2 ``GFLHead`` as LD uses it; METHODS.md §3.2, numbers in §3.9).

Conventions:

* A **distribution** is ``[..., 4 * (reg_max + 1)]`` logits, edges in the order left, top, right, bottom, each edge
  a softmax over the bins ``0..reg_max`` (distances in units of the level's stride).
* ``integral(logits)`` = expected bin per edge, ``[..., 4]``: ``d = sum_k k * softmax(logits)_k``.
* Points are anchor centres ``[N, 2]`` (x, y); ``distance2bbox`` / ``bbox2distance`` convert between ltrb distances
  and xyxy boxes in the same units (pixels or stride units: the caller divides by the stride).
* Losses return per-element values (``reduction="none"``): the caller weights and normalises, as GFL does per level
  (``detkd.models.gfl``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def integral(logits: Tensor, reg_max: int) -> Tensor:
    """Expected distance per edge ``[..., 4]`` from distribution logits ``[..., 4 * (reg_max + 1)]``."""
    prob = F.softmax(logits.reshape(*logits.shape[:-1], 4, reg_max + 1).float(), dim=-1)  # [..., 4, n]
    project = torch.arange(reg_max + 1, dtype=prob.dtype, device=prob.device)  # [n] = linspace(0, reg_max, n)
    return prob @ project  # [..., 4]


def distance2bbox(points: Tensor, distance: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
    """xyxy boxes ``[N, 4]`` from centres ``[N, 2]`` and ltrb distances ``[N, 4]``; clamped to (h, w) if given."""
    x1 = points[:, 0] - distance[:, 0]
    y1 = points[:, 1] - distance[:, 1]
    x2 = points[:, 0] + distance[:, 2]
    y2 = points[:, 1] + distance[:, 3]
    if max_shape is not None:
        h, w = max_shape
        if isinstance(h, Tensor):  # traced graph (ONNX export): the valid size is a graph input
            h, w = h.to(x1.dtype), w.to(x1.dtype)
            x1, x2 = x1.clamp(min=0).minimum(w), x2.clamp(min=0).minimum(w)
            y1, y2 = y1.clamp(min=0).minimum(h), y2.clamp(min=0).minimum(h)
        else:
            x1, x2 = x1.clamp(0, w), x2.clamp(0, w)
            y1, y2 = y1.clamp(0, h), y2.clamp(0, h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def bbox2distance(points: Tensor, boxes: Tensor, max_dis: float | None = None, eps: float = 0.1) -> Tensor:
    """ltrb distances ``[N, 4]`` of xyxy ``boxes [N, 4]`` from ``points [N, 2]``, clamped to ``[0, max_dis - eps]``.

    GFL targets: ``max_dis = reg_max`` gives the range ``[0, reg_max - 0.1]`` so the right bin ``floor(y) + 1`` exists.
    """
    d = torch.stack([points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1],
                     boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]], dim=-1)
    if max_dis is not None:
        d = d.clamp(min=0, max=max_dis - eps)
    return d


def quality_focal_loss(logits: Tensor, labels: Tensor, score: Tensor, beta: float = 2.0) -> Tensor:
    """QFL per anchor ``[N]`` (summed over classes) for sigmoid ``logits [N, K]``.

    ``labels [N]`` int64: class index ``0..K-1`` for positives, any value outside ``[0, K)`` (e.g. ``K`` or -1) for
    negatives; ``score [N]`` the IoU quality target of positives. Negatives: ``sum_k BCE(z_k, 0) * sigma(z_k)^beta``;
    a positive replaces its class column by ``BCE(z_c, y) * |y - sigma(z_c)|^beta``.
    """
    logits = logits.float()
    sig = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none") * sig.pow(beta)
    k = logits.shape[1]
    pos = ((labels >= 0) & (labels < k)).nonzero().squeeze(1)  # [n_pos]
    if pos.numel():
        cls = labels[pos]
        z = logits[pos, cls]
        y = score[pos].to(z.dtype)
        pos_loss = F.binary_cross_entropy_with_logits(z, y, reduction="none") * (y - sig[pos, cls]).abs().pow(beta)
        loss = loss.index_put((pos, cls), pos_loss)
    return loss.sum(dim=1)


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """DFL per edge ``[M]`` for bin logits ``[M, reg_max + 1]`` and continuous targets ``[M]`` in ``[0, reg_max)``.

    ``(floor(y) + 1 - y) * CE(logits, floor(y)) + (y - floor(y)) * CE(logits, floor(y) + 1)`` (mmdet's left weight,
    which gives ``CE(., y)`` alone at integer y).
    """
    left = target.long()
    right = left + 1
    w_left = right.to(target.dtype) - target
    w_right = target - left.to(target.dtype)
    logits = logits.float()
    return (F.cross_entropy(logits, left, reduction="none") * w_left
            + F.cross_entropy(logits, right, reduction="none") * w_right)


def aligned_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU ``[N]`` of row-aligned xyxy boxes ``a, b [N, 4]`` (mmdet ``bbox_overlaps(is_aligned=True)``, eps 1e-6)."""
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter).clamp(min=eps)
