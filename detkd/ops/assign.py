"""Anchor assigners of the dense detectors.

ATSS (Adaptive Training Sample Selection, mmdet v2 ``ATSSAssigner`` as GFL / LD use it; METHODS.md §3.2, §3.4),
for one image:

1. IoU ``[P, G]`` of the anchors (xyxy) with the GT boxes; L2 distance between anchor centres and GT centres.
2. Per level the ``topk`` (9) anchors closest to each GT centre (``min(topk, level size)``): ``L * topk``
   candidates per GT.
3. Per GT the threshold ``thr_g = mean + std`` of its candidates' IoUs (unbiased std, as ``torch.std``). These
   thresholds are returned: LD's VLR (§3.4) uses exactly them.
4. A candidate is positive for g iff its IoU >= thr_g and its centre lies inside g by more than 0.01 on all four
   sides. An anchor positive for several GTs goes to the one with the highest IoU (first on ties).

Anchors outside ``valid`` (mmdet: anchors beyond the image's own padded area, ``allowed_border = -1``) take no part:
the top-k runs over the valid anchors of each level only, and invalid anchors are never positive.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou


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
