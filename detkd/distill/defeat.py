"""DeFeat: distilling object detectors via decoupled features (Guo et al., CVPR 2021; METHODS.md §4).

Neck terms (the released config), one adapter per level ``l`` (``student_taps[l]`` → ``teacher_taps[l]``):

- ``kd.defeat.fg.<tap>`` = ``fg_weight / L · Σ M_l·(A_l(S_l) − T_l)² / max(1, 2·C·Σ M_l)``
- ``kd.defeat.bg.<tap>`` = ``bg_weight / L · Σ (1−M_l)·(A_l(S_l) − T_l)² / max(1, 2·C·Σ(1−M_l))``
  so their sum is ``w_fg·mean_l fg_l + w_bg·mean_l bg_l`` with ``w_fg = 3``, ``w_bg = 12`` (§4.4; ``C`` is in the
  denominators, sums over the whole batch).
- ``M_l`` (``defeat_fg_masks``, §4.3/§4.8): each GT on ONE level by ``floor(log2(s/56))`` (``s`` with "+1"),
  cells ``[int(y1/r), int(y2/r)) × [int(x1/r), int(x2/r))`` with the single-cell quirk and the border clamp,
  strides from the STUDENT's declared ``strides`` and map sizes from its features; a GT of another scale is
  background on this level; GT-less images are all background (fg term 0 when no image has a GT there).
- ``A_l``: 3×3 conv with bias, NO activation, weights ``normal·fmod(2)·1e-4`` (bias PyTorch default), trained.

Head terms (``head``; off in the released config, §4.5):

- ``"roi"`` — two-stage models: temperature KL on positive and negative RoIs separately (``decoupled_roi_kd``,
  weights 2 / 2, T 1), ``kd.defeat.head.pos`` / ``kd.defeat.head.neg``. Sampling ``SampleSTU`` (the clean
  pairing of §4.5): the teacher's RoI head scores the STUDENT's sampled RoIs through the teacher-query hook,
  ``ctx.query_teacher("roi_forward", teacher feats, student rois, image_sizes)``, and the groups come from the
  student's RoI labels (0 = background). ``faithful=True`` reproduces the reference's default SampleTEA pairing
  WITH its label mismatch (§4.11-2), for comparison: the teacher samples its own RoIs (its training-path
  proposals, GT added, its sampler: ``ctx.query_teacher("sample_rois", teacher output, targets)``), the
  student's RoI head runs on those RoIs (with gradient), but the fg/bg groups come from the STUDENT's own
  sampling, i.e. the labels of other RoIs. Image by image, the first ``min(r_teacher, r_student)`` rows are
  paired (with a full sampler both have ``roi_batch`` rows; the reference indexes one with the other's mask
  and fails when they differ). The two RoI terms read their logits through the mask callable (``roi_logits``);
  their tap fields name the first neck taps only to satisfy the term layout.
- ``"dense"`` — one-stage models (our design for RetinaNet, §4.7, where the reference is not runnable): the
  student's own assigner splits the priors into positives (``assign.pos``) and negatives (``assign.neg``,
  i.e. the priors its classification loss uses as background; ignored priors enter neither group) and the class
  scores are distilled per group with ``kd_kl``, averaged over the group's priors: one Bernoulli KL per class,
  summed over classes, for sigmoid heads; softmax KL for softmax heads (the kind comes from both models'
  ``head_spec``, checked at build time). ``kd.defeat.head.pos`` / ``kd.defeat.head.neg``.

Start-up checks: taps declared on both models with equal strides; every student tap has a declared stride.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from detkd.distill.adapters import AdapterSpec
from detkd.distill.distiller import HEAD_PREFIX, DistillContext, Term, class_probability_kind, distill_method
from detkd.distill.fgfi import check_taps
from detkd.distill.losses import decoupled_roi_kd, kd_kl, masked_feat_l2
from detkd.distill.masks import defeat_fg_masks, target_boxes


@dataclass
class DeFeatConfig:
    fg_weight: float = 3.0  # hint_neck_w
    bg_weight: float = 12.0  # hint_neck_back_w
    base: float = 56.0  # level rule: floor(log2(s / base))
    student_taps: list[str] = field(default_factory=lambda: ["p3", "p4", "p5"])
    teacher_taps: list[str] = field(default_factory=lambda: ["p3", "p4", "p5"])
    head: Literal["off", "dense", "roi"] = "off"
    head_fg_weight: float = 2.0  # head_cls_w
    head_bg_weight: float = 2.0  # head_cls_back_w
    head_T: float = 1.0  # head_cls_T
    faithful: bool = False  # head='roi': SampleTEA with the reference's label mismatch (§4.11-2) instead of SampleSTU
    logits: str = "cls_logits"  # dense head key (softmax or sigmoid, from head_spec)


def fg_masks(ctx: DistillContext, cfg: DeFeatConfig, strides: list[int]) -> list[Tensor]:
    s = ctx.student
    hw = [tuple(s.feats[tap].shape[-2:]) for tap in cfg.student_taps]
    device = s.feats[cfg.student_taps[0]].device
    return defeat_fg_masks(target_boxes(ctx.targets, device), strides, hw, cfg.base, device)


def level_mask(ctx: DistillContext, cfg: DeFeatConfig, strides: list[int], level: int, fg: bool) -> Tensor:
    m = ctx.memo("defeat.fg", lambda: fg_masks(ctx, cfg, strides))[level]
    return m if fg else ~m


def assigned(ctx: DistillContext, group: str) -> Tensor:
    a = ctx.student.assign
    if a is None:
        raise ValueError("DeFeat head='dense' needs the student's assignment: call the student with targets")
    return a.pos.bool() if group == "pos" else a.neg.bool() & ~a.pos.bool()


def roi_logits(ctx: DistillContext) -> tuple[Tensor, Tensor, Tensor]:
    """``(student logits [R, K+1], teacher logits on the same RoIs [R, K+1], student labels [R])``, once per batch."""

    def build():
        s = ctx.student
        rois = getattr(s, "rois", None)
        if rois is None or rois.labels is None:
            raise ValueError(
                "DeFeat head='roi' needs a two-stage student called with targets (DetOutput.rois with labels)"
            )
        query = getattr(ctx, "query_teacher", None)
        if query is None:
            raise RuntimeError("DeFeat head='roi' needs the distillation context's teacher-query hook")
        t_rois = query("roi_forward", ctx.teacher.feats, rois.rois, s.image_sizes)
        if t_rois.cls_logits.shape != rois.cls_logits.shape:
            raise ValueError(
                f"DeFeat head='roi': teacher RoI logits {tuple(t_rois.cls_logits.shape)} do not match the student's "
                f"{tuple(rois.cls_logits.shape)} on the same RoIs (class counts differ?)"
            )
        return rois.cls_logits, t_rois.cls_logits.detach(), rois.labels

    return ctx.memo("defeat.roi", build)


def first_rows(rows: Tensor, counts: list[int], keep: list[int]) -> Tensor:
    """The first ``keep[i]`` of image ``i``'s ``counts[i]`` rows of ``rows`` (images stacked in order)."""
    parts = rows.split(counts)
    return torch.cat([p[:k] for p, k in zip(parts, keep)])


def roi_logits_sample_tea(ctx: DistillContext, student: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """SampleTEA as released (§4.5): logits on the TEACHER's sampled RoIs, labels from the STUDENT's sampling."""

    def build():
        s = ctx.student
        if getattr(s, "rois", None) is None or s.rois.labels is None:
            raise ValueError("DeFeat head='roi' needs a two-stage student called with targets (DetOutput.rois)")
        t_rois = ctx.query_teacher("sample_rois", ctx.teacher, ctx.targets)
        s_on_t = student.roi_forward(s.feats, t_rois.rois, s.image_sizes)  # with gradient
        n_t = [int(r.shape[0]) for r in t_rois.rois]
        n_s = [int(r.shape[0]) for r in s.rois.rois]
        keep = [min(a, b) for a, b in zip(n_t, n_s)]
        if s_on_t.cls_logits.shape[1] != t_rois.cls_logits.shape[1]:
            raise ValueError(
                f"DeFeat head='roi': teacher RoI logits have {t_rois.cls_logits.shape[1]} columns, the student's "
                f"{s_on_t.cls_logits.shape[1]} (class counts differ?)"
            )
        return (first_rows(s_on_t.cls_logits, n_t, keep), first_rows(t_rois.cls_logits, n_t, keep).detach(),
                first_rows(s.rois.labels, n_s, keep))

    return ctx.memo("defeat.roi", build)


def roi_kd(_s: Tensor, _t: Tensor, mask: tuple[Tensor, Tensor, Tensor], group: str, T: float) -> Tensor:
    s_logits, t_logits, labels = mask
    pos, neg = decoupled_roi_kd(s_logits, t_logits, labels, T)
    return pos if group == "pos" else neg


@distill_method(DeFeatConfig)
def defeat(cfg: DeFeatConfig, student: nn.Module, teacher: nn.Module) -> list[Term]:
    check_taps(student, teacher, cfg.student_taps, cfg.teacher_taps, "defeat")
    s_strides = getattr(student, "strides", None) or {}
    missing = [t for t in cfg.student_taps if t not in s_strides]
    if missing:
        raise KeyError(f"distill.defeat: the student declares no stride for taps {missing} (the fg mask needs them)")
    strides = [int(s_strides[t]) for t in cfg.student_taps]
    n = len(cfg.student_taps)
    terms = []
    for level, (s_tap, t_tap) in enumerate(zip(cfg.student_taps, cfg.teacher_taps)):
        adapter = AdapterSpec(key=f"defeat_{s_tap}", kind="conv3x3", bias=True, init="normal_fmod2")
        for fg, name, weight in ((True, "fg", cfg.fg_weight), (False, "bg", cfg.bg_weight)):
            terms.append(
                Term(
                    f"{name}.{s_tap}",
                    student=s_tap,
                    teacher=t_tap,
                    loss=partial(masked_feat_l2, denom="defeat"),
                    weight=weight / n,
                    mask=partial(level_mask, cfg=cfg, strides=strides, level=level, fg=fg),
                    adapter=adapter,
                )
            )
    if cfg.faithful and cfg.head != "roi":
        raise ValueError(f"distill.defeat.faithful=true applies to head='roi' only (head={cfg.head!r})")
    if cfg.head == "dense":
        kind = class_probability_kind(student, teacher, cfg.logits, "distill.defeat")
        loss = partial(kd_kl, T=cfg.head_T, kind=kind)
        tap = HEAD_PREFIX + cfg.logits
        for group, weight in (("pos", cfg.head_fg_weight), ("neg", cfg.head_bg_weight)):
            terms.append(Term(f"head.{group}", tap, tap, loss, weight=weight, mask=partial(assigned, group=group)))
    elif cfg.head == "roi":
        if not callable(getattr(teacher, "roi_forward", None)):
            raise ValueError(
                f"distill.defeat.head='roi': the teacher ({type(teacher).__name__}) has no roi_forward (a two-stage "
                "detector's second stage on given boxes); use head='dense' on one-stage models"
            )
        if cfg.faithful and not callable(getattr(teacher, "sample_rois", None)):
            raise ValueError(f"distill.defeat.faithful=true: the teacher ({type(teacher).__name__}) has no "
                             "sample_rois (its own RoI sampling, needed by SampleTEA)")
        if cfg.faithful and not callable(getattr(student, "roi_forward", None)):
            raise ValueError(f"distill.defeat.faithful=true: the student ({type(student).__name__}) has no roi_forward")
        rois = partial(roi_logits_sample_tea, student=student) if cfg.faithful else roi_logits
        for group, weight in (("pos", cfg.head_fg_weight), ("neg", cfg.head_bg_weight)):
            terms.append(Term(f"head.{group}", cfg.student_taps[0], cfg.teacher_taps[0],
                              partial(roi_kd, group=group, T=cfg.head_T), weight=weight, mask=rois))
    elif cfg.head != "off":
        raise ValueError(f"distill.defeat.head={cfg.head!r}: use 'off', 'dense' or 'roi'")
    return terms
