"""Assigners: which GT each prior (anchor / point) is matched to. Vectorised over GT x priors, one image at a time.

* ``max_iou_match``: the IoU max-matcher with torchvision's ``Matcher`` semantics (RetinaNet, Faster R-CNN's
  RPN and RoI sampling): each prior takes its best GT; best IoU ``>= high`` -> that GT index, ``< low`` ->
  ``BELOW_LOW_THRESHOLD`` (-1), in between -> ``BETWEEN_THRESHOLDS`` (-2); with ``allow_low_quality`` every
  GT also takes the priors of its highest IoU (ties included) even below ``high``. It calls
  ``torchvision.models.detection._utils.Matcher`` and adds the empty-GT case (all priors -1).
* ``retinaface_match`` / ``retinaface_hard_negatives``: RetinaFace's matcher and hard-negative mining
  (METHODS.md §1.6), exactly as the reference ``match`` and ``MultiBoxLoss``:

  1. IoU ``[G, P]`` of GT boxes with the priors (xyxy, no "+1"). For each GT its best prior (first argmax).
     GTs whose best IoU < ``forced_iou`` (0.2) are "hard": they are not forced. If no GT reaches 0.2, the whole
     image is background.
  2. For each prior its best GT. The best prior of every non-hard GT gets overlap 2 (always positive). Then
     every GT j (hard ones included, in index order, so the LAST j wins a shared prior) takes over its best
     prior; the overlap value of that prior is not changed (so a hard GT's prior is positive only if its
     overlap with its original best GT already reaches ``pos_iou``).
  3. A prior is positive iff its (possibly forced) overlap >= ``pos_iou`` (0.35).

  Hard-negative mining: per prior the 2-way CE of "background", ``logsumexp(z) - z[target]`` with the
  logsumexp stabilised by the batch-global max (as the reference), positives set to -inf so they rank last;
  priors are ranked per image by that loss, descending (stable sort). The image's negatives are the top
  ``min(neg_pos * n_pos, P - 1)`` non-positives. ``neg_rank`` is each prior's rank in that ranking, so
  ``neg_rank < min(3 * n_pos, P - 1)`` selects TDKD's distillation negatives from the same ranking.

* ``atss_assign``: ATSS (Adaptive Training Sample Selection, mmdet v2 ``ATSSAssigner`` as GFL / LD use it;
  METHODS.md §3.2, §3.4), for one image:

  1. IoU ``[P, G]`` of the anchors (xyxy) with the GT boxes; L2 distance between anchor centres and GT centres.
  2. Per level the ``topk`` (9) anchors closest to each GT centre (``min(topk, level size)``): ``L * topk``
     candidates per GT.
  3. Per GT the threshold ``thr_g = mean + std`` of its candidates' IoUs (unbiased std, as ``torch.std``). These
     thresholds are returned: LD's VLR (§3.4) uses exactly them.
  4. A candidate is positive for g iff its IoU >= thr_g and its centre lies inside g by more than 0.01 on all four
     sides. An anchor positive for several GTs goes to the one with the highest IoU (first on ties).

  Anchors outside ``valid`` (mmdet: anchors beyond the image's own padded area, ``allowed_border = -1``) take no
  part: the top-k runs over the valid anchors of each level only, and invalid anchors are never positive.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

BELOW_LOW_THRESHOLD = Matcher.BELOW_LOW_THRESHOLD  # -1
BETWEEN_THRESHOLDS = Matcher.BETWEEN_THRESHOLDS  # -2


# ------------------------------------------------------------------------------------------ IoU max-matcher


@dataclass
class IoUMatch:
    """``matched`` int64 [P]: GT index, or -1 (below ``low``) / -2 (between thresholds);
    ``iou`` float [P]: IoU with the best GT (0 without GT)."""

    matched: Tensor
    iou: Tensor

    @property
    def pos(self) -> Tensor:  # bool [P]
        return self.matched >= 0

    @property
    def neg(self) -> Tensor:  # bool [P]
        return self.matched == BELOW_LOW_THRESHOLD


def max_iou_match(gt_boxes: Tensor, priors_xyxy: Tensor, high: float, low: float,
                  allow_low_quality: bool = False) -> IoUMatch:
    """torchvision ``Matcher(high, low, allow_low_quality)`` on ``box_iou(gt_boxes [G, 4], priors_xyxy [P, 4])``."""
    p, dev = priors_xyxy.shape[0], priors_xyxy.device
    if gt_boxes.numel() == 0:
        return IoUMatch(torch.full((p,), BELOW_LOW_THRESHOLD, dtype=torch.long, device=dev),
                        torch.zeros(p, dtype=priors_xyxy.dtype, device=dev))
    iou = box_iou(gt_boxes.to(priors_xyxy.dtype), priors_xyxy)  # [G, P]
    matched = Matcher(high, low, allow_low_quality)(iou)
    return IoUMatch(matched, iou.max(dim=0).values)


# ---------------------------------------------------------------------------------------- RetinaFace's matcher


@dataclass
class RetinaFaceMatch:
    """Matching of one image's priors by ``retinaface_match``.

    ``matched`` int64 [P] GT index per prior (-1 where the image has no usable GT)
    ``pos``     bool  [P] overlap (after forcing) >= pos_iou
    ``iou``     float [P] IoU with the best GT (before forcing; 0 without GT)
    """

    matched: Tensor
    pos: Tensor
    iou: Tensor


def retinaface_match(gt_boxes: Tensor, priors_xyxy: Tensor, pos_iou: float = 0.35,
                     forced_iou: float = 0.2) -> RetinaFaceMatch:
    """Match ``priors_xyxy [P, 4]`` to ``gt_boxes [G, 4]`` (both xyxy, same units) as the reference ``match``."""
    p = priors_xyxy.shape[0]
    dev = priors_xyxy.device
    if gt_boxes.numel() == 0:
        return RetinaFaceMatch(
            torch.full((p,), -1, dtype=torch.long, device=dev),
            torch.zeros(p, dtype=torch.bool, device=dev),
            torch.zeros(p, dtype=priors_xyxy.dtype, device=dev),
        )
    overlaps = box_iou(gt_boxes.to(priors_xyxy.dtype), priors_xyxy)  # [G, P]
    best_prior_iou, best_prior = overlaps.max(dim=1)  # [G]
    valid_gt = best_prior_iou >= forced_iou  # [G]
    best_truth_iou, best_truth = overlaps.max(dim=0)  # [P]
    iou = best_truth_iou.clone()
    if not bool(valid_gt.any()):  # whole image background (reference: conf 0 everywhere)
        return RetinaFaceMatch(torch.full((p,), -1, dtype=torch.long, device=dev),
                               torch.zeros(p, dtype=torch.bool, device=dev), iou)
    overlap = best_truth_iou.index_fill(0, best_prior[valid_gt], 2.0)  # [P]
    # "for j in range(G): best_truth[best_prior[j]] = j": the last j wins a shared prior.
    g = gt_boxes.shape[0]
    owner = torch.full((p,), -1, dtype=torch.long, device=dev)
    owner.scatter_reduce_(0, best_prior, torch.arange(g, device=dev), reduce="amax")
    matched = torch.where(owner >= 0, owner, best_truth)
    return RetinaFaceMatch(matched, overlap >= pos_iou, iou)


def background_ce(conf_logits: Tensor) -> Tensor:
    """``logsumexp(z) - z[0]`` per prior ``[B, P]`` from logits ``[B, P, K]``, stabilised by the batch-global max."""
    z_max = conf_logits.max()
    lse = torch.log(torch.exp(conf_logits - z_max).sum(-1)) + z_max  # [B, P]
    return lse - conf_logits[..., 0]


def retinaface_hard_negatives(conf_logits: Tensor, pos: Tensor, neg_pos: int = 7) -> tuple[Tensor, Tensor]:
    """Hard negatives ``neg [B, P]`` (bool) and the ranking ``neg_rank [B, P]`` (int64, 0 = hardest).

    ``conf_logits [B, P, K]`` softmax logits with background column 0 (no gradient needed), ``pos [B, P]`` bool.
    """
    with torch.no_grad():
        loss = background_ce(conf_logits.detach().float())  # [B, P]
        loss = loss.masked_fill(pos, float("-inf"))
        order = torch.sort(loss, dim=1, descending=True, stable=True).indices  # [B, P]
        b, p = loss.shape
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(p, device=loss.device).expand(b, p))
        num_neg = (neg_pos * pos.sum(1, keepdim=True)).clamp(max=p - 1)  # [B, 1]
        neg = (rank < num_neg) & ~pos
    return neg, rank


# ------------------------------------------------------------------------------------------------- ATSS


@dataclass
class ATSSMatch:
    """ATSS result of one image with ``P`` anchors and ``G`` GT boxes.

    ``matched``    int64 [P] GT index of positives, -1 elsewhere
    ``pos``        bool  [P]
    ``iou``        float [P] IoU with the best-overlapping GT (0 without GT), whatever the assignment
    ``thresholds`` float [G] per-GT IoU threshold mean + std of the candidates
    """

    matched: Tensor
    pos: Tensor
    iou: Tensor
    thresholds: Tensor


def _centres(boxes: Tensor) -> Tensor:  # [N, 4] -> [N, 2]
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


def atss_assign(anchors: Tensor, level_sizes: list[int], gt_boxes: Tensor, topk: int = 9,
                valid: Tensor | None = None) -> ATSSMatch:
    """Assign ``anchors [P, 4]`` (xyxy, levels concatenated with ``level_sizes``) to ``gt_boxes [G, 4]``.

    ``valid [P]`` bool (optional) restricts the assignment to those anchors (see the module docstring).
    """
    p, dev = anchors.shape[0], anchors.device
    if sum(level_sizes) != p:
        raise ValueError(f"level sizes {level_sizes} do not add up to {p} anchors")
    g = gt_boxes.shape[0]
    gt_boxes = gt_boxes.to(anchors.dtype)
    matched = torch.full((p,), -1, dtype=torch.long, device=dev)
    pos = torch.zeros(p, dtype=torch.bool, device=dev)
    if g == 0 or p == 0:
        return ATSSMatch(matched, pos, torch.zeros(p, dtype=anchors.dtype, device=dev),
                         torch.zeros(g, dtype=anchors.dtype, device=dev))
    iou_all = box_iou(anchors, gt_boxes)  # [P, G]
    if valid is not None:
        sub = valid.nonzero().squeeze(1)  # [P'] indices of the valid anchors
        starts = torch.tensor([0, *level_sizes], device=dev).cumsum(0)
        sizes = [int(((sub >= starts[i]) & (sub < starts[i + 1])).sum()) for i in range(len(level_sizes))]
        m = atss_assign(anchors[sub], sizes, gt_boxes, topk)
        matched[sub], pos[sub] = m.matched, m.pos
        return ATSSMatch(matched, pos, iou_all.max(dim=1).values, m.thresholds)
    dist = torch.cdist(_centres(anchors), _centres(gt_boxes))  # [P, G]
    candidates = []
    start = 0
    for n in level_sizes:
        if n:
            k = min(topk, n)
            candidates.append(dist[start:start + n].topk(k, dim=0, largest=False).indices + start)  # [k, G]
        start += n
    cand = torch.cat(candidates, dim=0)  # [C, G]
    gt_idx = torch.arange(g, device=dev)
    cand_iou = iou_all[cand, gt_idx]  # [C, G]
    thresholds = cand_iou.mean(0) + cand_iou.std(0)  # [G]
    is_pos = cand_iou >= thresholds[None, :]
    c = _centres(anchors)[cand]  # [C, G, 2]
    inside = torch.stack([c[..., 0] - gt_boxes[:, 0], c[..., 1] - gt_boxes[:, 1],
                          gt_boxes[:, 2] - c[..., 0], gt_boxes[:, 3] - c[..., 1]], dim=-1).amin(-1) > 0.01
    is_pos &= inside
    # IoU where (anchor, gt) is a positive candidate, -inf elsewhere; each anchor takes its best GT
    masked = torch.full((p, g), float("-inf"), dtype=iou_all.dtype, device=dev)
    rows, cols = cand[is_pos], gt_idx.expand_as(cand)[is_pos]
    masked[rows, cols] = iou_all[rows, cols]
    best, best_gt = masked.max(dim=1)  # [P]
    pos = best > float("-inf")
    matched = torch.where(pos, best_gt, matched)
    return ATSSMatch(matched, pos, iou_all.max(dim=1).values, thresholds)
