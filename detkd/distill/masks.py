"""Distillation masks: pure functions of priors, assignments and feature sizes (no hard-coded index ranges).

Conventions:
- prior masks are ``bool [B, P]`` over the concatenation of all levels in head order (the order of
  ``DetOutput.head[key]``); ``level_sizes[l]`` = number of priors of level ``l`` = ``H_l·W_l·A_l``.
- inside a level, priors are ordered row-major over (y, x), then the ``A`` anchors of a location, so
  ``prior_mask[:, start:end].view(B, H·W, A)`` lines up with ``feature.flatten(2)`` (``[B, C, H·W]``).
- location masks are ``bool [B, H, W]``; a location is set when ANY of its anchors is set.
Everything here runs without gradients and returns tensors on the assignment's device.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detkd.structures import Assignment


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
def tdkd_location_masks(
    assign: Assignment,
    level_sizes: Sequence[int],
    feat_hw: Sequence[tuple[int, int]],
    anchors_per_loc: int | Sequence[int] | None = None,
    neg_ratio: int = 3,
) -> list[tuple[Tensor, Tensor]]:
    """Per level ``(cls_mask, loc_mask)``, each ``bool [B, H, W]`` (TDKD §1.7, level split from the ACTUAL
    level sizes, so any input size works)."""
    cls_prior, loc_prior = tdkd_prior_masks(assign, neg_ratio)
    cls_locs = priors_to_locations(cls_prior, level_sizes, feat_hw, anchors_per_loc)
    loc_locs = priors_to_locations(loc_prior, level_sizes, feat_hw, anchors_per_loc)
    return list(zip(cls_locs, loc_locs))


@torch.no_grad()
def positive_location_masks(
    assign: Assignment,
    level_sizes: Sequence[int],
    feat_hw: Sequence[tuple[int, int]],
    anchors_per_loc: int | Sequence[int] | None = None,
) -> list[Tensor]:
    """Locations holding at least one positive prior, per level ``bool [B, H, W]`` (the "gt" feature mask)."""
    return priors_to_locations(assign.pos.bool(), level_sizes, feat_hw, anchors_per_loc)
