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
