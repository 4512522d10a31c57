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
from torchvision.ops import batched_nms
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


def diou_beta(a: Tensor, b: Tensor, beta: float | None = 0.8) -> Tensor:
    """``[..., N, M]``: ``IoU − (ρ² / (c² + 1e-7))^β`` for xyxy boxes ``a [..., N, 4]``, ``b [..., M, 4]``.

    ``ρ`` = centre distance, ``c`` = diagonal of the enclosing box; the union has no eps (the reference's
    ``diou``). ``beta=None`` gives the plain IoU (no distance term).
    """
    ax1, ay1, ax2, ay2 = (c[..., :, None] for c in a.unbind(-1))  # [..., N, 1]
    bx1, by1, bx2, by2 = (c[..., None, :] for c in b.unbind(-1))  # [..., 1, M]
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0)
    inter = iw.mul_(ih)
    union = ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1)) - inter
    iou = inter.div_(union)
    if beta is None:
        return iou
    rho2 = ((ax1 + ax2) - (bx1 + bx2)).pow_(2).add_(((ay1 + ay2) - (by1 + by2)).pow_(2)).mul_(0.25)
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    c2 = cw.pow_(2).add_(ch.pow_(2)).add_(1e-7)
    return iou.sub_(rho2.div_(c2).pow_(beta))


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


def _candidate_pairs(
    boxes: Tensor, index: Tensor, valid: Tensor, min_iou: float, chunk: int
) -> tuple[Tensor, Tensor]:
    """Pairs ``(i, j)``, ``i < j`` (rows of ``boxes``), of the same group with plain IoU ``> min_iou``.

    ``index [G, n]`` / ``valid [G, n]`` group the rows (``_pack_by_label``); the dense ``[G, r, n]`` IoU block is
    computed ``chunk`` rows at a time, so memory is ``O(G·chunk·n)``, never ``O(N²)`` for many classes.
    """
    g_boxes = boxes[index.clamp(min=0)]  # [G, n, 4]
    n = index.shape[1]
    col = torch.arange(n, device=boxes.device)
    rows_i, rows_j = [], []
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        iou = diou_beta(g_boxes[:, r0:r1], g_boxes, None)  # [G, r, n]
        upper = col[None, :] > torch.arange(r0, r1, device=boxes.device)[:, None]  # [r, n]
        cand = (iou > min_iou) & upper & valid[:, r0:r1, None] & valid[:, None, :]
        g, i, j = cand.nonzero(as_tuple=True)
        rows_i.append(index[g, i + r0])
        rows_j.append(index[g, j])
    return torch.cat(rows_i), torch.cat(rows_j)


def cluster_diou_voting_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_threshold: float = 0.6,
    max_per_img: int = 100,
    *,
    beta: float | None = 0.8,
    class_offset: float = 4000.0,
    vote_threshold: float = 0.7,
    sigma: float = 0.025,
    max_iter: int = 999,
    chunk: int = 1024,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Score-voting Cluster-DIoU-NMS (LD's ``voting_cluster_diounms``, METHODS.md §3.8).

    Inputs after the score filter: ``boxes [N, 4]`` xyxy, ``scores [N]``, ``labels [N]``. The algorithm: sort by
    score (descending, stable); shift boxes by ``class_offset · label``; ``D = DIoU_β`` of the shifted boxes
    (``beta=None``: plain IoU); Cluster-NMS fixed point on the strict upper triangle ``U`` of ``D`` with
    ``iou_threshold``: ``keep_j = max_i X_ij ≤ thr`` with ``X`` = ``U`` with the rows of suppressed boxes zeroed,
    iterated until ``X`` repeats (= greedy NMS); voting matrix ``V`` = upper triangle of ``D`` WITH the diagonal,
    rows of suppressed boxes 0; ``w_ij = exp(−(1 − V_ij·[V_ij > vote_threshold])² / sigma) · score_j`` over ALL
    ``j`` (pairs that do not vote keep the tiny ``exp(−1/sigma)`` leak, 4.2e-18 at sigma 0.025); each kept box
    becomes ``Σ_j w_ij box_j / Σ_j w_ij`` (un-shifted boxes); scores unchanged; kept boxes in score order, at
    most ``max_per_img``. Returns ``(boxes [K, 4], scores [K], labels [K], keep [K])``, ``keep`` indexing the
    inputs. Needs ``iou_threshold ≥ 0``.

    How it is computed (the reference builds dense ``[N, N]`` matrices over all classes): since ``D ≤ IoU``,
    a pair with plain ``IoU ≤ m = min(iou_threshold, vote_threshold)`` can neither suppress nor vote, so its
    exact ``D`` never matters except through the leak. We (1) find the pairs with ``IoU > m − 1e-3`` (margin for
    rounding) inside each class — classes cannot overlap once shifted when every box lies within
    ``±class_offset/2`` (the reference's own assumption; otherwise all boxes form one group, exactly like the
    reference) — with dense ``[G, chunk, n]`` IoU blocks (G classes present, n the largest class); (2) evaluate
    ``D`` on the shifted boxes of those pairs only; (3) run the same fixed-point iteration on the sparse pairs
    with ``D > thr`` (identical keep sequence); (4) vote exactly, writing the leak in closed form:
    ``Σ_j w_ij b_j = leak·Σ_j s_j b_j + Σ_{j∈E_i} (exp(−(1−V_ij)²/σ) − leak)·s_j b_j`` with ``E_i`` the voting
    pairs of row ``i`` and its diagonal. Memory ``O(G·chunk·n + #pairs)``; results equal the dense
    transcription up to float summation order (tested).
    """
    if iou_threshold < 0:
        raise ValueError(f"cluster_diou_voting_nms: iou_threshold must be >= 0, got {iou_threshold}")
    n_in = boxes.shape[0]
    dev = boxes.device
    if n_in == 0:
        return boxes[:0], scores[:0], labels[:0], torch.empty(0, dtype=torch.long, device=dev)
    order = torch.argsort(scores, descending=True, stable=True)
    b, s, lab = boxes[order], scores[order], labels[order]
    shifted = b + (lab.to(b.dtype) * class_offset)[:, None]
    by_class = bool((b.amin() > -class_offset / 2) & (b.amax() < class_offset / 2))
    if by_class:
        index, valid = _pack_by_label(lab)
    else:
        index = torch.arange(n_in, device=dev)[None]
        valid = torch.ones_like(index, dtype=torch.bool)
    grouped = b if by_class else shifted
    ri, rj = _candidate_pairs(grouped, index, valid, min(iou_threshold, vote_threshold) - 1e-3, chunk)
    d = torch.diagonal(diou_beta(shifted[ri][:, None], shifted[rj][:, None], beta), dim1=-2, dim2=-1)[:, 0]
    # (3) the Cluster-NMS fixed point on the suppressing pairs (ri < rj in score order)
    sup = d > iou_threshold
    si, sj = ri[sup], rj[sup]
    keep = torch.ones(n_in, dtype=torch.bool, device=dev)
    for _ in range(max_iter):
        new = torch.ones_like(keep)
        new[sj[keep[si]]] = False
        if torch.equal(new, keep):
            break
        keep = new
    # (4) voting of the kept rows
    leak = torch.exp(torch.tensor(-1.0 / sigma, dtype=b.dtype, device=dev))
    vote = keep[ri] & (d > vote_threshold)
    vi, vj, vd = ri[vote], rj[vote], d[vote]
    wv = (torch.exp(-(1 - vd).pow(2) / sigma) - leak) * s[vj]  # [E]
    diag = (1 - leak) * s  # D_ii = 1: exp(0) = 1
    num = leak * (s[:, None] * b).sum(0) + diag[:, None] * b  # [N, 4]
    den = leak * s.sum() + diag  # [N]
    num = num.index_add(0, vi, wv[:, None] * b[vj])
    den = den.index_add(0, vi, wv)
    rows = keep.nonzero().flatten()[:max_per_img]
    return num[rows] / den[rows, None], s[rows], lab[rows], order[rows]


# ------------------------------------------------------------------------------------ NMS presets


def greedy_batched_nms(
    boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float = 0.6, max_per_img: int = 100
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class-wise greedy NMS (torchvision ``batched_nms``), same signature and outputs as the voting preset."""
    keep = batched_nms(boxes, scores, labels, float(iou_threshold))[:max_per_img]
    return boxes[keep], scores[keep], labels[keep], keep


NMS_PRESETS = {"greedy": greedy_batched_nms, "cluster-diou-voting": cluster_diou_voting_nms}
"""Post-processing presets with one signature ``(boxes [N, 4], scores [N], labels [N], iou_threshold,
max_per_img) -> (boxes, scores, labels, keep)``, inputs after the score filter; a detector's decode picks one
by name (``--nms cluster-diou-voting``)."""


def get_nms(name: str):
    """The NMS preset called ``name`` (a clear error listing the presets otherwise)."""
    if name not in NMS_PRESETS:
        raise ValueError(f"unknown NMS preset {name!r} (known: {', '.join(NMS_PRESETS)})")
    return NMS_PRESETS[name]
