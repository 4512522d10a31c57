"""RetinaFace prior matching and hard-negative mining (METHODS.md §1.6), vectorised over GT x priors.

Matching of one image (``match_priors``), exactly as the reference ``match``:

1. IoU ``[G, P]`` of GT boxes with the priors (xyxy, no "+1"). For each GT its best prior (first argmax).
   GTs whose best IoU < ``forced_iou`` (0.2) are "hard": they are not forced. If no GT reaches 0.2, the whole
   image is background.
2. For each prior its best GT. The best prior of every non-hard GT gets overlap 2 (always positive). Then
   every GT j (hard ones included, in index order, so the LAST j wins a shared prior) takes over its best
   prior; the overlap value of that prior is not changed (so a hard GT's prior is positive only if its
   overlap with its original best GT already reaches ``pos_iou``).
3. A prior is positive iff its (possibly forced) overlap >= ``pos_iou`` (0.35).

Hard-negative mining (``mine_hard_negatives``): per prior the 2-way CE of "background",
``logsumexp(z) - z[target]`` with the logsumexp stabilised by the batch-global max (as the reference), positives
set to -inf so they rank last; priors are ranked per image by that loss, descending (stable sort). The image's
negatives are the top ``min(neg_pos * n_pos, P - 1)`` non-positives. ``neg_rank`` is each prior's rank in that
ranking, so ``neg_rank < min(3 * n_pos, P - 1)`` selects TDKD's distillation negatives from the same ranking.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou


@dataclass
class PriorMatch:
    """Matching of one image's priors.

    ``matched`` int64 [P] GT index per prior (-1 where the image has no usable GT)
    ``pos``     bool  [P] overlap (after forcing) >= pos_iou
    ``iou``     float [P] IoU with the best GT (before forcing; 0 without GT)
    """

    matched: Tensor
    pos: Tensor
    iou: Tensor


def match_priors(gt_boxes: Tensor, priors_xyxy: Tensor, pos_iou: float = 0.35, forced_iou: float = 0.2) -> PriorMatch:
    """Match ``priors_xyxy [P, 4]`` to ``gt_boxes [G, 4]`` (both xyxy, same units)."""
    p = priors_xyxy.shape[0]
    dev = priors_xyxy.device
    if gt_boxes.numel() == 0:
        return PriorMatch(
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
        return PriorMatch(torch.full((p,), -1, dtype=torch.long, device=dev),
                          torch.zeros(p, dtype=torch.bool, device=dev), iou)
    overlap = best_truth_iou.index_fill(0, best_prior[valid_gt], 2.0)  # [P]
    # "for j in range(G): best_truth[best_prior[j]] = j": the last j wins a shared prior.
    g = gt_boxes.shape[0]
    owner = torch.full((p,), -1, dtype=torch.long, device=dev)
    owner.scatter_reduce_(0, best_prior, torch.arange(g, device=dev), reduce="amax")
    matched = torch.where(owner >= 0, owner, best_truth)
    return PriorMatch(matched, overlap >= pos_iou, iou)


def background_ce(conf_logits: Tensor) -> Tensor:
    """``logsumexp(z) - z[0]`` per prior ``[B, P]`` from logits ``[B, P, K]``, stabilised by the batch-global max."""
    z_max = conf_logits.max()
    lse = torch.log(torch.exp(conf_logits - z_max).sum(-1)) + z_max  # [B, P]
    return lse - conf_logits[..., 0]


def mine_hard_negatives(conf_logits: Tensor, pos: Tensor, neg_pos: int = 7) -> tuple[Tensor, Tensor]:
    """Hard negatives ``neg [B, P]`` (bool) and the ranking ``neg_rank [B, P]`` (int64, 0 = hardest).

    ``conf_logits [B, P, K]`` (no gradient needed), ``pos [B, P]`` bool.
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
