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


# ---------------------------------------------------------------------- score-voting Cluster-DIoU-NMS (§3.8)

VOTE_LEAK = "exp(-1/sigma) · score_j for every pair not voting (V <= vote_threshold), as in the reference"


def diou_beta(a: Tensor, b: Tensor, beta: float | None = 0.8) -> Tensor:
    """``[..., N, M]``: ``IoU − (ρ² / (c² + 1e-7))^β`` for xyxy boxes ``a [..., N, 4]``, ``b [..., M, 4]``.

    ``ρ`` = centre distance, ``c`` = diagonal of the enclosing box; the union has no eps (the reference's
    ``diou``). ``beta=None`` gives the plain IoU (no distance term).
    """
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).prod(-1)
    iou = inter / (area_a[..., :, None] + area_b[..., None, :] - inter)
    if beta is None:
        return iou
    ca = (a[..., :2] + a[..., 2:]) / 2
    cb = (b[..., :2] + b[..., 2:]) / 2
    rho2 = (ca[..., :, None, :] - cb[..., None, :, :]).pow(2).sum(-1)
    enc = torch.maximum(a[..., :, None, 2:], b[..., None, :, 2:]) - torch.minimum(a[..., :, None, :2], b[..., None, :, :2])
    c2 = enc.pow(2).sum(-1)
    return iou - (rho2 / (c2 + 1e-7)).pow(beta)


def cluster_keep(upper: Tensor, iou_threshold: float, max_iter: int = 999) -> Tensor:
    """Cluster-NMS fixed point (§3.8-4) on strict-upper-triangular overlaps ``upper [..., N, N]`` (rows = the
    higher-scored box): ``keep_j = max_i X_ij ≤ thr`` with ``X = upper`` with the rows of suppressed boxes
    zeroed, iterated until ``keep`` repeats (then ``X`` repeats too). Equals greedy NMS. Bool ``[..., N]``."""
    keep = torch.ones(upper.shape[:-1], dtype=torch.bool, device=upper.device)
    for _ in range(max_iter):
        x = upper * keep[..., :, None]
        new = x.amax(-2) <= iou_threshold
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def _pack_by_label(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Group the (score-sorted) rows by label: ``index [G, n]`` into the rows (−1 = padding, score order kept
    inside a group) and ``valid [G, n]``."""
    order = torch.argsort(labels, stable=True)  # label-major, score order inside a label
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    n = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    col = torch.arange(n, device=labels.device)
    valid = col[None, :] < counts[:, None]  # [G, n]
    index = torch.where(valid, order[(starts[:, None] + col[None, :]).clamp(max=order.numel() - 1)], -1)
    return index, valid


def cluster_diou_voting_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_threshold: float = 0.6,
    beta: float | None = 0.8,
    class_offset: float = 4000.0,
    vote_threshold: float = 0.7,
    sigma: float = 0.025,
    max_per_img: int = 100,
    max_iter: int = 999,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Score-voting Cluster-DIoU-NMS (LD's ``voting_cluster_diounms``, METHODS.md §3.8).

    Inputs after the score filter: ``boxes [N, 4]`` xyxy, ``scores [N]``, ``labels [N]``. Steps: sort by score
    (descending, stable); shift boxes by ``class_offset · label``; ``D = DIoU_β`` of the shifted boxes
    (``beta=None``: plain IoU); Cluster-NMS fixed point on the strict upper triangle with ``iou_threshold``
    (= greedy NMS); voting matrix ``V`` = upper triangle of ``D`` WITH the diagonal, rows of suppressed boxes 0;
    ``w_ij = exp(−(1 − V_ij·[V_ij > vote_threshold])² / sigma) · score_j`` (pairs that do not vote keep the tiny
    ``exp(−1/sigma)`` leak); each kept box becomes ``Σ_j w_ij box_j / Σ_j w_ij`` over ALL ``j`` (un-shifted boxes);
    scores unchanged; kept boxes in score order, at most ``max_per_img``.

    Returns ``(boxes [K, 4], scores [K], labels [K], keep [K])`` with ``keep`` indexing the inputs.

    Memory/speed (the reference is O(N²) in N = all boxes of all classes): when the shifted classes cannot
    overlap (every box spans less than ``class_offset``, the reference's own assumption), all cross-class
    entries of ``D`` are negative, so they never suppress and only contribute the leak. We therefore run the
    fixed point and the voting per class, batched as ``[G, n, n]`` (G = classes present, n = the largest class),
    and add the cross-class leak exactly from per-class sums: ``exp(−1/sigma)·(Σ_all − Σ_class) s_j·box_j``.
    Memory is ``G·n²`` instead of ``N²`` (one class with all N boxes is the worst case, ``N²``). When boxes
    are larger than the offset the full ``[N, N]`` matrix is used, exactly as the reference.
    """
    n_in = boxes.shape[0]
    dev = boxes.device
    if n_in == 0:
        empty = torch.empty(0, dtype=torch.long, device=dev)
        return boxes[:0], scores[:0], labels[:0], empty
    order = torch.argsort(scores, descending=True, stable=True)
    b, s, lab = boxes[order], scores[order], labels[order]
    shifted = b + (lab.to(b.dtype) * class_offset)[:, None]
    span = (b[:, 2:] - b[:, :2]).amax() if n_in else b.new_zeros(())
    per_class = bool((b.amin() > -class_offset / 2) & (b.amax() < class_offset / 2) & (span < class_offset / 2))
    leak = torch.exp(torch.tensor(-1.0 / sigma, dtype=b.dtype, device=dev))
    if per_class:
        index, valid = _pack_by_label(lab)  # [G, n]
        safe = index.clamp(min=0)
        gb, gs, gsh = b[safe], s[safe] * valid, shifted[safe]  # [G, n, 4], [G, n], [G, n, 4]
    else:
        index = torch.arange(n_in, device=dev)[None]
        valid = torch.ones_like(index, dtype=torch.bool)
        gb, gs, gsh = b[None], s[None], shifted[None]
    d = diou_beta(gsh, gsh, beta)  # [G, n, n]
    pair_valid = valid[:, :, None] & valid[:, None, :]
    d = torch.where(pair_valid, d, torch.zeros_like(d))
    upper = torch.triu(d, diagonal=1)
    keep = cluster_keep(upper, iou_threshold, max_iter) & valid  # [G, n]
    # voting rows of the kept boxes only
    v = torch.triu(d, diagonal=1) + torch.diag_embed(valid.to(d.dtype))  # D_ii = 1
    v = v * keep[:, :, None]
    w = torch.exp(-(1 - v * (v > vote_threshold)).pow(2) / sigma) * gs[:, None, :]  # [G, n, n]; gs = 0 on padding
    num = torch.einsum("gij,gjc->gic", w, gb)  # [G, n, 4]
    den = w.sum(-1)  # [G, n]
    if per_class:  # the cross-class leak, exactly: all pairs with another class vote with exp(-1/sigma)
        tot_num = (s[:, None] * b).sum(0)  # [4]
        tot_den = s.sum()
        cls_num = (gs[:, :, None] * gb).sum(1)  # [G, 4]
        cls_den = gs.sum(1)  # [G]
        num = num + leak * (tot_num - cls_num)[:, None, :]
        den = den + leak * (tot_den - cls_den)[:, None]
    voted = num / den[..., None]
    rows = index[keep]  # positions in the sorted order, grouped by class
    rows, perm = torch.sort(rows)  # back to global score order
    out_boxes = voted[keep][perm][:max_per_img]
    rows = rows[:max_per_img]
    return out_boxes, s[rows], lab[rows], order[rows]
