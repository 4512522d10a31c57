"""FGFI: fine-grained feature imitation (Wang et al., CVPR 2019; METHODS.md §2).

Terms, one per imitated level ``l`` (``student_taps[l]`` → ``teacher_taps[l]``; level ``l`` of the student's
priors, ``DetOutput.priors[l]``, hosts the anchors of that map):

- ``kd.fgfi.imit.<tap>`` = ``weight · Σ_{b,c,y,x} I_l · (A_l(S_l) − T_l)² / (2 · Σ I_l)`` (§2.4: channels summed
  in the numerator, not counted in the denominator; guarded with ``max(1, ·)`` for GT-less batches, where the
  reference divides by 0), ``weight`` = λ = 0.01, times 0 for the first ``warmup_iters`` = 400 iterations
  (then full weight, no ramp).
- ``I_l`` (``fgfi_location_masks``, §2.3): the STUDENT's anchors of that level — all of them, border-crossing
  ones included — against every GT, ``τ_k = ψ · max IoU`` per GT and level, strict ``>``, "+1" IoU, union.
  On FPN models each level uses its own anchors and max (DeFeat's ``mask-neck-roi`` port); a single-map model
  (VGG conv5) has one level. The same mask is applied to both maps.
- ``A_l``: 3×3 conv + ReLU with bias (``conv3x3_relu``), weights ``normal·fmod(2)·1e-4``, bias PyTorch default
  (§2.2), trainable, one per level.

``variant="defeat_port"`` is DeFeat's port of FGFI (its released ``mask-neck-roi`` config, §4.6, §2.9-3): the
same per-level mask, DeFeat's normalisation ``max(1, 2·C·Σ I_l)``, a 3×3 adapter WITHOUT activation, and
``weight / L`` per level (``weight`` = ``hint_neck_w`` = 3 there, no warm-up). The mask's IoU follows the
config's ``plus1`` (the port's config sets ``False``: mmdetection v2 dropped the "+1" pixel convention).

Start-up checks: every tap exists in both models' declared ``channels`` and has the same stride on both sides
(the mask is built on the student's anchors and applied to the teacher's map). On the first step (and in
``check_setup``), when the teacher reports anchors too, each level's anchor-location grid (the mean anchor
centre of every map cell) must be the student's: otherwise the mask's cells would not be the teacher's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from detkd.distill.adapters import AdapterSpec
from detkd.distill.distiller import DistillContext, Schedule, Term, distill_method
from detkd.distill.losses import masked_feat_l2
from detkd.distill.masks import fgfi_location_masks, target_boxes


@dataclass
class FGFIConfig:
    weight: float = 0.01  # λ (--ilw)
    psi: float = 0.5  # mask factor ψ (strict '>')
    warmup_iters: int = 400  # imitation × 0 before this step (--ws)
    plus1: bool = True  # "+1" pixel IoU of the reference
    student_taps: list[str] = field(default_factory=lambda: ["p3", "p4", "p5"])
    teacher_taps: list[str] = field(default_factory=lambda: ["p3", "p4", "p5"])
    variant: Literal["fgfi", "defeat_port"] = "fgfi"  # "defeat_port": DeFeat's mask-neck-roi port (§4.6)


def check_taps(student: nn.Module, teacher: nn.Module, s_taps: list[str], t_taps: list[str], method: str) -> None:
    """Taps declared on both models with equal strides (a clear start-up error naming the tap otherwise)."""
    if len(s_taps) != len(t_taps) or not s_taps:
        raise ValueError(
            f"distill.{method}: {len(s_taps)} student taps {s_taps} but {len(t_taps)} teacher taps {t_taps}"
        )
    for side, model, taps in (("student", student, s_taps), ("teacher", teacher, t_taps)):
        channels = getattr(model, "channels", {}) or {}
        for tap in taps:
            if tap not in channels:
                raise KeyError(
                    f"distill.{method}: the {side} ({type(model).__name__}) has no tap {tap!r} "
                    f"(declared: {', '.join(sorted(channels)) or 'none'})"
                )
    s_str, t_str = getattr(student, "strides", None), getattr(teacher, "strides", None)
    if s_str is not None and t_str is not None:
        for s_tap, t_tap in zip(s_taps, t_taps):
            if s_tap in s_str and t_tap in t_str and s_str[s_tap] != t_str[t_tap]:
                raise ValueError(
                    f"distill.{method}: student tap {s_tap!r} has stride {s_str[s_tap]} but teacher tap {t_tap!r} "
                    f"has stride {t_str[t_tap]}: the maps cannot be paired"
                )


def location_centres(priors: Tensor, hw: tuple[int, int]) -> Tensor:
    """``[H·W, 2]`` mean anchor centre (x, y) of every map cell; ``priors`` ``[H·W·A, 4]`` xyxy, cell-major."""
    cells = hw[0] * hw[1]
    if cells == 0 or priors.shape[0] % cells:
        return priors.new_zeros(0, 2)
    c = (priors[:, :2] + priors[:, 2:]) / 2
    return c.reshape(cells, -1, 2).mean(1)


def check_anchor_grids(ctx: DistillContext, cfg: FGFIConfig, student_hw: list[tuple[int, int]]) -> None:
    """The teacher's anchors (when it reports them) sit on the student's cell grid, level by level."""
    t_priors = list(getattr(ctx.teacher, "priors", None) or [])
    if not t_priors:
        return
    s_priors = ctx.student.priors
    if len(t_priors) != len(s_priors):
        raise ValueError(
            f"distill.fgfi: the student has anchors on {len(s_priors)} levels ({cfg.student_taps}) but the teacher "
            f"on {len(t_priors)} (taps {cfg.teacher_taps}): the FGFI mask cannot be paired"
        )
    for level, (s_tap, t_tap) in enumerate(zip(cfg.student_taps, cfg.teacher_taps)):
        hw = student_hw[level]
        s_c = location_centres(s_priors[level], hw)
        t_hw = tuple(int(v) for v in ctx.teacher.feats[t_tap].shape[-2:]) if t_tap in ctx.teacher.feats else None
        t_c = location_centres(t_priors[level].to(s_c), hw)
        if t_hw != hw or t_c.shape != s_c.shape or not torch.allclose(s_c, t_c, atol=1e-3):
            where = ""
            if t_c.shape == s_c.shape and t_c.numel():
                k = int((s_c - t_c).abs().amax(1).argmax())
                where = f"; cell {divmod(k, hw[1])}: student centre {s_c[k].tolist()}, teacher {t_c[k].tolist()}"
            raise ValueError(
                f"distill.fgfi: student tap {s_tap!r} and teacher tap {t_tap!r} have different anchor grids "
                f"(student map {hw}, teacher map {t_hw}{where}); the FGFI mask is built on the student's anchors and "
                "needs the teacher's anchors on the same cells"
            )


def student_level_masks(ctx: DistillContext, cfg: FGFIConfig) -> list[Tensor]:
    inp = ctx.mask_inputs(cfg.student_taps, what="FGFI masks")  # level l of the priors hosts tap l's anchors
    if len(inp.priors) != len(cfg.student_taps):
        raise ValueError(f"FGFI masks: the student reports no anchors (DetOutput.priors) for taps {cfg.student_taps}")
    if ctx.step == 0:
        check_anchor_grids(ctx, cfg, inp.feat_hw)
    anchors = inp.priors  # xyxy in input pixels (structures.PRIOR_FORMAT)
    return fgfi_location_masks(anchors, target_boxes(ctx.targets, anchors[0].device), inp.feat_hw, cfg.psi,
                               cfg.plus1)


def level_mask(ctx: DistillContext, cfg: FGFIConfig, level: int) -> Tensor:
    return ctx.memo("fgfi.masks", lambda: student_level_masks(ctx, cfg))[level]


@distill_method(FGFIConfig)
def fgfi(cfg: FGFIConfig, student: nn.Module, teacher: nn.Module) -> list[Term]:
    if not 0.0 < cfg.psi <= 1.0:
        raise ValueError(f"distill.fgfi.psi={cfg.psi}: need 0 < psi <= 1")
    if cfg.variant not in ("fgfi", "defeat_port"):
        raise ValueError(f"distill.fgfi.variant={cfg.variant!r}: use 'fgfi' or 'defeat_port'")
    check_taps(student, teacher, cfg.student_taps, cfg.teacher_taps, "fgfi")
    schedule = Schedule(warmup_iters=cfg.warmup_iters, warmup="zero") if cfg.warmup_iters > 0 else None
    port = cfg.variant == "defeat_port"
    kind, denom = ("conv3x3", "defeat") if port else ("conv3x3_relu", "fgfi")
    weight = cfg.weight / len(cfg.student_taps) if port else cfg.weight
    terms = []
    for level, (s_tap, t_tap) in enumerate(zip(cfg.student_taps, cfg.teacher_taps)):
        adapter = AdapterSpec(key=f"fgfi_{s_tap}", kind=kind, bias=True, init="normal_fmod2")
        terms.append(
            Term(
                f"imit.{s_tap}",
                student=s_tap,
                teacher=t_tap,
                loss=partial(masked_feat_l2, denom=denom),
                weight=weight,
                mask=partial(level_mask, cfg=cfg, level=level),
                adapter=adapter,
                schedule=schedule,
            )
        )
    return terms
