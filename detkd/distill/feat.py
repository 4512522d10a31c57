"""FitNets-style feature hints: the feature baseline.

One term per tap pair, ``kd.feat.<student tap>`` = ``weight · mean((A(S) − T)²)`` with ``A`` an adapter
(``adapter`` kind, trainable) from the student tap's declared channels to the teacher tap's. Default taps
student ``p3, p4, p5`` → teacher ``p3, p4, p5``. ``mask``: ``"none"`` (every location) or ``"gt"`` (locations
holding a positive prior of the student's assignment; ``student_taps[i]`` is head level ``i``; the mean is then
over the masked elements; the level split comes from ``distill.masks.mask_inputs``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from torch import Tensor, nn

from detkd.distill.adapters import AdapterKind, AdapterSpec
from detkd.distill.distiller import DistillContext, Term, distill_method
from detkd.distill.losses import feat_mse
from detkd.distill.masks import positive_location_masks


@dataclass
class FeatConfig:
    weight: float = 1.0
    student_taps: list[str] = field(default_factory=lambda: ["p3", "p4", "p5"])
    teacher_taps: list[str] = field(default_factory=lambda: ["p3", "p4", "p5"])
    adapter: AdapterKind = "conv1x1"
    mask: Literal["none", "gt"] = "none"
    level_key: str = ""  # head output whose per-level sizes split the priors ("" = the model's priors)


def level_masks(ctx: DistillContext, taps: list[str], level_key: str) -> list[Tensor]:
    """Positive-location masks ``bool [B, H, W]`` for the student taps (tap i = head level i)."""
    return positive_location_masks(ctx.mask_inputs(taps, level_key or None, "feat mask='gt'"))


def gt_mask(ctx: DistillContext, level: int, taps: list[str], level_key: str) -> Tensor:
    return ctx.memo("feat.gt_masks", lambda: level_masks(ctx, taps, level_key))[level]


@distill_method(FeatConfig)
def feat(cfg: FeatConfig, student: nn.Module, teacher: nn.Module) -> list[Term]:
    if len(cfg.student_taps) != len(cfg.teacher_taps):
        raise ValueError(
            f"distill.feat: {len(cfg.student_taps)} student taps {cfg.student_taps} but "
            f"{len(cfg.teacher_taps)} teacher taps {cfg.teacher_taps}"
        )
    if cfg.mask not in ("none", "gt"):
        raise ValueError(f"distill.feat.mask={cfg.mask!r}: use 'none' or 'gt'")
    terms = []
    for level, (s_tap, t_tap) in enumerate(zip(cfg.student_taps, cfg.teacher_taps)):
        mask = None
        if cfg.mask == "gt":
            mask = partial(gt_mask, level=level, taps=list(cfg.student_taps), level_key=cfg.level_key)
        adapter = AdapterSpec(key=f"feat_{s_tap}", kind=cfg.adapter)
        terms.append(Term(s_tap, s_tap, t_tap, feat_mse, weight=cfg.weight, mask=mask, adapter=adapter))
    return terms
