"""Distillation masks: pure functions of priors, assignments and feature sizes (no hard-coded index ranges).

Conventions:
- prior masks are ``bool [B, P]`` over the concatenation of all levels in head order (the order of
  ``DetOutput.head[key]``); ``level_sizes[l]`` = number of priors of level ``l`` = ``H_l·W_l·A_l``.
- inside a level, priors are ordered row-major over (y, x), then the ``A`` anchors of a location, so
  ``prior_mask[:, start:end].view(B, H·W, A)`` lines up with ``feature.flatten(2)`` (``[B, C, H·W]``).
- location masks are ``bool [B, H, W]``; a location is set when ANY of its anchors is set.
- ``MaskInputs`` is everything a mask builder reads about one model's batch: its assignment, the prior count
  per level, the (H, W) of the tapped feature maps, the priors (xyxy), the valid image sizes and the targets.
  ``mask_inputs(out, taps)`` builds it from a ``DetOutput`` with the checks every method needs once
  (assignment present, one tap per level), so method modules never repeat that glue.
Everything here runs without gradients and returns tensors on the assignment's device.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

from detkd.ops.boxes import box_iou_plus1
from detkd.structures import Assignment


@dataclass(frozen=True)
class MaskInputs:
    """One model's batch as mask builders see it.

    ``assign``       the model's ``Assignment`` (``[B, P]`` tensors)
    ``level_sizes``  priors per level ``[P_l]`` (sum = P), in head order
    ``feat_hw``      ``(H_l, W_l)`` of the tap that level ``l`` is distilled on
    ``priors``       per level ``[P_l, 4]`` xyxy input pixels (empty where the model reports none)
    ``image_sizes``  valid ``(h, w)`` of each image inside the padded batch (empty where not reported)
    ``targets``      the batch's target dicts (``None`` when not given)
    """

    assign: Assignment
    level_sizes: list[int]
    feat_hw: list[tuple[int, int]]
    priors: list[Tensor]
    image_sizes: list[tuple[int, int]]
    targets: list[dict] | None = None


def mask_inputs(out, taps: Sequence[str], targets: list[dict] | None = None, level_key: str | None = None,
                what: str = "this mask") -> MaskInputs:
    """``MaskInputs`` of a ``DetOutput`` whose level ``l`` is distilled on ``out.feats[taps[l]]``.

    Level sizes come from ``out.priors`` when the model reports them, else from ``out.head[level_key]``
    (default ``"cls_logits"``). ``what`` names the caller in errors (``"TDKD masks"``).
    """
    if getattr(out, "assign", None) is None:
        raise ValueError(f"{what} needs the model's assignment: call the model with targets")
    if out.priors and level_key is None:
        sizes = [int(p.shape[0]) for p in out.priors]
    else:
        key = level_key or "cls_logits"
        if key not in out.head:
            raise KeyError(f"{what}: the output has no head key {key!r} to split priors by level "
                           f"(has: {sorted(out.head)})")
        sizes = out.level_sizes(key)
    if len(sizes) != len(taps):
        raise ValueError(f"{what}: {len(taps)} taps {list(taps)} but the head has {len(sizes)} levels")
    missing = [t for t in taps if t not in out.feats]
    if missing:
        raise KeyError(f"{what}: the output has no feature taps {missing} (has: {sorted(out.feats)})")
    hw = [tuple(int(v) for v in out.feats[t].shape[-2:]) for t in taps]
    return MaskInputs(out.assign, sizes, hw, list(out.priors), list(out.image_sizes), targets)


def _check_levels(num_priors: int, level_sizes: Sequence[int], feat_hw: Sequence[tuple[int, int]]) -> None:
    if len(level_sizes) != len(feat_hw):
        raise ValueError(f"{len(level_sizes)} prior levels {list(level_sizes)} but {len(feat_hw)} feature sizes")
    if sum(level_sizes) != num_priors:
        raise ValueError(
            f"level sizes {list(level_sizes)} sum to {sum(level_sizes)}, but the mask has {num_priors} priors"
        )


def anchors_per_location(level_size: int, hw: tuple[int, int], level: int = 0) -> int:
    """``A`` such that ``level_size == H·W·A``; a clear error when the sizes do not divide."""
    h, w = hw
    if h * w == 0 or level_size % (h * w) != 0:
        raise ValueError(
            f"level {level}: {level_size} priors cannot be split over a {h}x{w} feature map "
            f"(need a multiple of {h * w}); do the taps and head levels correspond?"
        )
    return level_size // (h * w)


@torch.no_grad()
def priors_to_locations(
    prior_mask: Tensor,
    level_sizes: Sequence[int],
    feat_hw: Sequence[tuple[int, int]],
    anchors_per_loc: int | Sequence[int] | None = None,
) -> list[Tensor]:
    """Split a ``bool [B, P]`` prior mask into levels and OR over anchors: one ``bool [B, H, W]`` per level.

    ``anchors_per_loc`` is an int, one int per level, or ``None`` (derived as ``level_size / (H·W)``).
    """
    b, p = prior_mask.shape
    _check_levels(p, level_sizes, feat_hw)
    out, start = [], 0
    for lvl, (size, (h, w)) in enumerate(zip(level_sizes, feat_hw)):
        if anchors_per_loc is None:
            a = anchors_per_location(size, (h, w), lvl)
        else:
            a = anchors_per_loc if isinstance(anchors_per_loc, int) else anchors_per_loc[lvl]
            if size != h * w * a:
                raise ValueError(
                    f"level {lvl}: {size} priors != {h}x{w} locations x {a} anchors = {h * w * a}"
                )
        lvl_mask = prior_mask[:, start : start + size].reshape(b, h * w, a).any(-1)  # [B, H*W]
        out.append(lvl_mask.reshape(b, h, w))
        start += size
    return out


@torch.no_grad()
def tdkd_prior_masks(assign: Assignment, neg_ratio: int = 3) -> tuple[Tensor, Tensor]:
    """TDKD prior masks (§1.7): ``cls = pos ∪ (neg_rank < min(neg_ratio·n_pos, P−1))``, ``loc = pos``.

    Uses the SAME hard-negative ranking as the detection loss (``assign.neg_rank``), so the distillation
    negatives are the hardest subset of the detection loss's negatives. Returns ``(cls, loc)``, ``bool [B, P]``.
    """
    if assign.neg_rank is None:
        raise ValueError(
            "TDKD masks need Assignment.neg_rank (the hard-negative ranking of the detection loss); "
            "this model's assigner does not fill it"
        )
    pos = assign.pos.bool()  # [B, P]
    num_priors = pos.shape[1]
    k = (neg_ratio * pos.sum(1, keepdim=True)).clamp(max=num_priors - 1)  # [B, 1]
    neg = (assign.neg_rank < k) & ~pos
    return pos | neg, pos


@torch.no_grad()
def tdkd_location_masks(inp: MaskInputs, neg_ratio: int = 3) -> list[tuple[Tensor, Tensor]]:
    """Per level ``(cls_mask, loc_mask)``, each ``bool [B, H, W]`` (TDKD §1.7, level split from the ACTUAL
    level sizes, so any input size works)."""
    cls_prior, loc_prior = tdkd_prior_masks(inp.assign, neg_ratio)
    cls_locs = priors_to_locations(cls_prior, inp.level_sizes, inp.feat_hw)
    loc_locs = priors_to_locations(loc_prior, inp.level_sizes, inp.feat_hw)
    return list(zip(cls_locs, loc_locs))


@torch.no_grad()
def positive_location_masks(inp: MaskInputs) -> list[Tensor]:
    """Locations holding at least one positive prior, per level ``bool [B, H, W]`` (the "gt" feature mask)."""
    return priors_to_locations(inp.assign.pos.bool(), inp.level_sizes, inp.feat_hw)


# ----------------------------------------------------------------------------------- FGFI (§2.3)


@torch.no_grad()
def fgfi_level_mask(
    anchors: Tensor, gt_boxes: Tensor, hw: tuple[int, int], psi: float = 0.5, plus1: bool = True
) -> Tensor:
    """FGFI imitation mask of one image on one feature map (METHODS.md §2.3): ``bool [H, W]``.

    ``anchors`` ``[H·W·A, 4]`` xyxy, ordered row-major (y, x) then anchor, ALL of them (border-crossing ones
    included); ``gt_boxes`` ``[G, 4]`` xyxy. Per GT ``k``: ``τ_k = psi · max_a IoU(a, k)``; a location is set when
    any of its anchors has ``IoU > τ_k`` (strict); union over GTs. ``plus1`` uses the "+1" pixel convention of
    the reference (area ``(x2−x1+1)(y2−y1+1)``). A point GT (zero width AND height) gets IoU 0 everywhere, as
    in the reference's IoU helper, so it adds nothing; a GT-less image gives an empty mask.
    """
    h, w = hw
    a = anchors_per_location(anchors.shape[0], hw)
    if gt_boxes.numel() == 0:
        return torch.zeros(h, w, dtype=torch.bool, device=anchors.device)
    anchors = anchors.float()
    gts = gt_boxes.to(anchors)
    iou = box_iou_plus1(anchors, gts) if plus1 else box_iou(anchors, gts)  # [P, G]
    point = (gts[:, 0] == gts[:, 2]) & (gts[:, 1] == gts[:, 3])  # [G]
    iou = iou.masked_fill(point[None, :], 0.0)
    tau = psi * iou.amax(0)  # [G]
    hit = (iou > tau[None, :]).any(1)  # [P]
    return hit.view(h * w, a).any(1).view(h, w)


@torch.no_grad()
def fgfi_location_masks(
    level_anchors: Sequence[Tensor],
    gt_boxes: Sequence[Tensor],
    feat_hw: Sequence[tuple[int, int]],
    psi: float = 0.5,
    plus1: bool = True,
) -> list[Tensor]:
    """FGFI masks per level, ``bool [B, H_l, W_l]``: each level's anchors against every GT of the image with
    that level's own ``max IoU`` (DeFeat's ``mask-neck-roi`` port on FPN; one level on a single C4/conv5 map).

    ``level_anchors[l]`` ``[H_l·W_l·A_l, 4]`` xyxy (shared by the batch); ``gt_boxes[b]`` ``[G_b, 4]`` xyxy.
    """
    if len(level_anchors) != len(feat_hw):
        raise ValueError(f"FGFI mask: {len(level_anchors)} anchor levels but {len(feat_hw)} feature maps")
    return [
        torch.stack([fgfi_level_mask(anc, gts, hw, psi, plus1) for gts in gt_boxes])
        for anc, hw in zip(level_anchors, feat_hw)
    ]


# --------------------------------------------------------------------------------- DeFeat (§4.3)


def defeat_gt_level(gt_boxes: Tensor, num_levels: int, base: float = 56.0) -> Tensor:
    """DeFeat's one-level-per-GT rule (§4.3): ``clamp(floor(log2(s / base + 1e-6)), 0, L−1)``, int64 ``[G]``,
    with ``s = sqrt((x2−x1+1)(y2−y1+1))`` (so ``s < 2·base`` → level 0, the finest map)."""
    g = gt_boxes.double()
    s = ((g[:, 2] - g[:, 0] + 1) * (g[:, 3] - g[:, 1] + 1)).clamp(min=0).sqrt()
    return torch.floor(torch.log2(s / base + 1e-6)).clamp(0, num_levels - 1).long()


@torch.no_grad()
def defeat_fg_masks(
    gt_boxes: Sequence[Tensor],
    strides: Sequence[int],
    feat_hw: Sequence[tuple[int, int]],
    base: float = 56.0,
    device: torch.device | str | None = None,
) -> list[Tensor]:
    """DeFeat foreground masks (``get_gt_mask``, §4.3 with the border clamp of §4.8): ``bool [B, H_l, W_l]``.

    Each GT lands on ONE level (``defeat_gt_level``); on it, with stride ``r`` and map ``h×w``:
    ``lx = max(int(x1/r), 0)``, ``rx = min(int(x2/r), w)``, ``ly = max(int(y1/r), 0)``, ``ry = min(int(y2/r), h)``
    (``int`` truncates toward zero) and ``mask[ly:ry, lx:rx] = 1`` (exclusive upper bounds). If ``lx == rx`` or
    ``ly == ry`` only the single cell ``mask[ly, lx]`` is set (a 1-cell-tall but wide box marks one cell),
    clamped to ``h−1``/``w−1`` at the right/bottom border. A GT of another scale is background on this level;
    padded image area is background. ``gt_boxes[b]`` ``[G_b, 4]`` xyxy input pixels.
    """
    if len(strides) != len(feat_hw):
        raise ValueError(f"DeFeat mask: {len(strides)} strides but {len(feat_hw)} feature maps")
    masks = [torch.zeros(len(gt_boxes), h, w, dtype=torch.bool, device=device) for h, w in feat_hw]
    for b, gts in enumerate(gt_boxes):
        if gts.numel() == 0:
            continue
        levels = defeat_gt_level(gts, len(strides), base).tolist()
        for (x1, y1, x2, y2), lvl in zip(gts.double().tolist(), levels):
            r, (h, w) = strides[lvl], feat_hw[lvl]
            lx, rx = max(int(x1 / r), 0), min(int(x2 / r), w)
            ly, ry = max(int(y1 / r), 0), min(int(y2 / r), h)
            if lx == rx or ly == ry:
                masks[lvl][b, min(ly, h - 1), min(lx, w - 1)] = True
            else:
                masks[lvl][b, ly:ry, lx:rx] = True
    return masks


# ------------------------------------------------------------------------------------- LD (§3.4)


def _centres(boxes: Tensor) -> Tensor:  # [N, 4] xyxy -> [N, 2]
    return (boxes[:, :2] + boxes[:, 2:]) / 2


@torch.no_grad()
def atss_thresholds(level_priors: Sequence[Tensor], gt_boxes: Tensor, topk: int = 9) -> Tensor:
    """ATSS per-GT IoU thresholds (§3.2, §3.4-1): ``float [G]``.

    Candidates: on every level the ``topk`` priors (``[P_l, 4]`` xyxy) whose centres are closest (L2) to the GT
    centre (fewer when a level has fewer priors). ``thr_g = mean + std`` (unbiased) of their plain IoUs with ``g``.
    """
    if gt_boxes.numel() == 0:
        return gt_boxes.new_zeros(0)
    gts = gt_boxes.float()
    ious = []
    for priors in level_priors:
        priors = priors.to(gts)
        dist = torch.cdist(_centres(gts), _centres(priors))  # [G, P_l]
        k = min(topk, priors.shape[0])
        idx = dist.topk(k, dim=1, largest=False).indices  # [G, k]
        iou = box_iou(gts, priors)  # [G, P_l]
        ious.append(iou.gather(1, idx))
    cand = torch.cat(ious, dim=1)  # [G, topk·L]
    return cand.mean(1) + cand.std(1)


def vlr_diou(priors: Tensor, gts: Tensor, faithful: bool = True, eps: float = 1e-6) -> Tensor:
    """The "DIoU" of LD's VLR selection, ``[P, G]`` for xyxy ``priors [P, 4]`` and ``gts [G, 4]``.

    ``faithful=True`` (the released code, §3.11-1): ``|a∩g| / |a| − ρ²/c²`` (IoF: the anchor's own area as the
    denominator); ``faithful=False``: the true DIoU ``IoU − ρ²/c²``. ``ρ`` = centre distance, ``c`` = diagonal of
    the enclosing box; denominators clamped at ``eps`` (mmdet's convention).
    """
    # per coordinate ([P, 1] against [1, G]): the same arithmetic as on [P, G, 2] pairs, without the small
    # last-axis reductions that dominate its cost on a dense head's priors
    px1, py1, px2, py2 = (v[:, None] for v in priors.unbind(1))
    gx1, gy1, gx2, gy2 = (v[None, :] for v in gts.unbind(1))
    inter = (torch.minimum(px2, gx2) - torch.maximum(px1, gx1)).clamp(min=0) * (
        torch.minimum(py2, gy2) - torch.maximum(py1, gy1)).clamp(min=0)  # [P, G]
    area_p = (px2 - px1) * (py2 - py1)  # [P, 1]
    area_g = (gx2 - gx1) * (gy2 - gy1)  # [1, G]
    if faithful:
        overlap = inter / area_p.clamp(min=eps)
    else:
        overlap = inter / (area_p + area_g - inter).clamp(min=eps)
    pc, gc = _centres(priors), _centres(gts)
    rho2 = (pc[:, None, 0] - gc[None, :, 0]).pow(2) + (pc[:, None, 1] - gc[None, :, 1]).pow(2)
    c2 = ((torch.maximum(px2, gx2) - torch.minimum(px1, gx1)).pow(2)
          + (torch.maximum(py2, gy2) - torch.minimum(py1, gy1)).pow(2)).clamp(min=eps)
    return overlap - rho2 / c2


@torch.no_grad()
def vlr_weights(
    level_priors: Sequence[Tensor],
    gt_boxes: Tensor,
    alpha: float = 0.25,
    topk: int = 9,
    faithful: bool = True,
    thresholds: Tensor | None = None,
) -> Tensor:
    """LD's valuable localization region of one image (§3.4): per-prior weights ``float [P]`` (all levels
    concatenated in head order); 0 outside the VLR.

    A prior ``a`` is in ``VLR(g)`` iff ``alpha·thr_g ≤ DIoU(a, g) < thr_g`` (``thr_g`` = the ATSS threshold,
    ``thresholds`` when the assigner already computed them, else ``atss_thresholds``; ``DIoU`` = ``vlr_diou``
    with ``faithful``). Every prior of every level is a candidate, no centre-in-box test, positives are not
    excluded. A prior in several VLRs takes the GT of highest IoU; its weight is that plain IoU. A GT-less image
    (the reference crashes) gives an all-zero (empty) VLR; ``thr_g ≤ 0`` gives an empty VLR for ``g``.
    """
    priors = torch.cat([p.float() for p in level_priors])  # [P, 4]
    if gt_boxes.numel() == 0:
        return priors.new_zeros(priors.shape[0])
    gts = gt_boxes.to(priors)
    thr = atss_thresholds(level_priors, gts, topk) if thresholds is None else thresholds.to(priors)  # [G]
    d = vlr_diou(priors, gts, faithful)  # [P, G]
    inside = (d >= alpha * thr[None, :]) & (d < thr[None, :])
    iou = box_iou(priors, gts)  # [P, G]
    best = torch.where(inside, iou, torch.full_like(iou, -1.0)).max(1)  # highest-IoU GT among the VLRs
    return torch.where(best.values >= 0, best.values.clamp(min=0), torch.zeros_like(best.values))


# ------------------------------------------------------------------------------------ mask inputs


def target_boxes(targets: Sequence[dict] | None, device: torch.device | str | None = None) -> list[Tensor]:
    """The GT boxes of each image, ``float32 [G_b, 4]`` xyxy on ``device`` (a clear error without targets)."""
    if targets is None:
        raise ValueError("this distillation mask needs the batch's targets (GT boxes)")
    out = []
    for i, t in enumerate(targets):
        if "boxes" not in t:
            raise KeyError(f"target {i} has no 'boxes' (keys: {sorted(t)})")
        out.append(torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4))
    return out
