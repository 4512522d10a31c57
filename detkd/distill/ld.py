"""LD: localization distillation (Zheng et al., CVPR 2022 / TPAMI; METHODS.md §3), for any dense head whose
``head_spec`` declares a ``"distribution"`` key (GFL's ``box_dist``, ``4·(reg_max+1)`` logits per prior).

Terms (all levels concatenated in head order; ``P`` = the student's positives ``assign.pos``, identical for the
teacher because the assignment depends on the GT only; ``kd_rows(p, q, T) = T²·(1/n)·Σ_k q_k log(q_k/p_k)``):

- ``kd.ld.ld``  = ``ld_weight · (1/4) · Σ_{i∈P} ω_i · Σ_{e∈l,t,r,b} kd_rows(r^S_{i,e}, r^T_{i,e}, ld_T)`` with
  ``ω_i = max_c σ(sg(z^S_{i,c}))`` — divided by the CONSTANT 4, not by #positives (§3.3-1, §3.11-3).
- ``kd.ld.kd``  = ``kd_weight · Σ_l (1/|P_l|) Σ_{i∈P_l} kd_rows(z^S_i, z^T_i, kd_T)`` — softmax over the K sigmoid
  logits, ``|P_l|`` the positives of level ``l`` in the batch (§3.3-2, §3.11-4).
- ``kd.ld.vlr`` = ``vlr_weight · (1/16) · Σ_{i∈V} v_i · Σ_e kd_rows(r^S_{i,e}, r^T_{i,e}, vlr_T)`` with the VLR and
  its IoU weights ``v`` from ``vlr_weights`` (§3.4: ATSS threshold of the 9 closest priors per level, taken
  from ``assign.thresholds`` when the assigner provides them; ``alpha`` 0.25; every prior a candidate; highest
  IoU GT on conflicts; ``faithful=True`` = the released IoF-based "DIoU", ``False`` = true DIoU; GT-less images
  give an empty VLR, where the reference crashes).
- ``kd.ld.im.<tap>`` (only with ``im_weight > 0``, §3.3-5): plain MSE (mean over the C·#selected elements, no
  adapter) between student and teacher feature maps at ``"finegrained"`` locations (IoU > 0.5·max IoU per GT,
  max over ALL levels' priors, one prior per location) or ``"fitnet"`` locations (prior centre strictly inside a
  GT); a level without positives gives 0.

Generalised beyond GFL (the method × detector matrix): any dense head with a ``"distribution"`` key runs, e.g.
RetinaNet with its optional distribution branch (``dist_reg_max > 0``: ``4·(reg_max+1)`` logits per ANCHOR, 9
per location, trained with DFL; see ``detkd.models.retinanet``). Everything above is per prior, so anchors
replace GFL's points unchanged; the one ATSS-specific input is the VLR's per-GT threshold ``thr_g``, which is
the threshold the student's own assigner calls positive: GFL's ATSS mean + std, RetinaNet's ``fg_iou`` (0.5) for
every GT (``Assignment.thresholds``), so the VLR is the anchors with ``alpha·fg_iou ≤ "DIoU" < fg_iou``: the
"almost positive" ring around each GT, as in GFL. (The ATSS rule itself is not reused on RetinaNet's anchors:
with 9 anchors per location its 9 closest candidates per level collapse onto one location.) Assigners that
report no thresholds fall back to the ATSS rule on the priors (``vlr_weights``).

Levels or batches without positives give exact zeros that keep the graph (§3.7). Defaults are the LDHead
defaults, i.e. what the released VOC "Main LD" and COCO R18/R34 configs really run (§3.11-2).

Start-up errors (naming the key/tap): a model without a ``"distribution"`` head key, different ``reg_max``,
different class counts, or different per-level strides between student and teacher.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from detkd.distill.distiller import HEAD_PREFIX, DistillContext, Term, class_probability_kind, distill_method
from detkd.distill.losses import feat_mse, weighted_kd
from detkd.distill.masks import target_boxes, vlr_weights
from detkd.ops.boxes import box_iou


@dataclass
class LDConfig:
    ld_weight: float = 0.25
    ld_T: float = 10.0
    kd_weight: float = 10.0
    kd_T: float = 2.0
    vlr_weight: float = 0.25
    vlr_T: float = 10.0
    vlr_alpha: float = 0.25
    topk: int = 9
    faithful: bool = True  # VLR "DIoU": True = released IoF-based variant, False = true DIoU
    im_weight: float = 0.0  # imitation (loss_im); 2.0 in the R50 COCO config
    imitation: Literal["finegrained", "fitnet"] = "finegrained"
    im_taps: list[str] = field(default_factory=lambda: ["p3", "p4", "p5", "p6", "p7"])
    dist_key: str = "box_dist"
    logits: str = "cls_logits"


def _hint(model: nn.Module) -> str:
    """``"; <how to add the branch>"`` for models that can grow a distribution head (``model.distribution_hint``,
    e.g. RetinaNet's ``dist_reg_max``), else empty."""
    hint = getattr(model, "distribution_hint", "")
    return f"; {hint}" if hint else ""


def _spec(model: nn.Module, key: str, kinds: tuple[str, ...], side: str):
    spec = (getattr(model, "head_spec", None) or {}).get(key)
    if spec is None or spec.kind not in kinds:
        declared = {k: v.kind for k, v in (getattr(model, "head_spec", None) or {}).items()}
        raise ValueError(
            f"distill.ld: the {side} ({type(model).__name__}) has no {'/'.join(kinds)} head key {key!r} "
            f"(declared head_spec: {declared or 'none'}); LD needs a distribution head such as GFL's box_dist"
            f"{_hint(model)}"
        )
    return spec


def check_models(cfg: LDConfig, student: nn.Module, teacher: nn.Module) -> int:
    """Start-up checks; returns ``reg_max + 1`` (bins per edge)."""
    s_dist = _spec(student, cfg.dist_key, ("distribution",), "student")
    t_dist = _spec(teacher, cfg.dist_key, ("distribution",), "teacher")
    if s_dist.reg_max != t_dist.reg_max or s_dist.dim != t_dist.dim:
        raise ValueError(
            f"distill.ld: {cfg.dist_key!r} has reg_max {s_dist.reg_max} on the student but {t_dist.reg_max} on "
            "the teacher; LD compares the distributions bin by bin"
        )
    if s_dist.reg_max is None or s_dist.dim != 4 * (s_dist.reg_max + 1):
        raise ValueError(
            f"distill.ld: {cfg.dist_key!r} dim {s_dist.dim} is not 4·(reg_max+1) with reg_max {s_dist.reg_max}"
        )
    class_probability_kind(student, teacher, cfg.logits, "distill.ld")  # same classifier on both sides
    s_str, t_str = getattr(student, "strides", None) or {}, getattr(teacher, "strides", None) or {}
    for tap in sorted(set(s_str) | set(t_str)):
        if "." in tap:  # head-tower taps repeat their level's stride
            continue
        if tap not in s_str or tap not in t_str:
            side = "teacher" if tap not in t_str else "student"
            raise ValueError(f"distill.ld: level {tap!r} exists on one model but not on the {side}; LD pairs "
                             "the two heads prior by prior")
        if s_str[tap] != t_str[tap]:
            raise ValueError(f"distill.ld: level {tap!r} has stride {s_str[tap]} on the student but {t_str[tap]} "
                             "on the teacher; LD pairs the two heads prior by prior")
    return s_dist.reg_max + 1


def _assign(ctx: DistillContext):
    a = ctx.student.assign
    if a is None:
        raise ValueError("LD needs the student's assignment: call the student with targets")
    return a


def main_weights(ctx: DistillContext, logits: str, sigmoid: bool) -> Tensor:
    """``pos · ω`` with ``ω = max_c σ(sg(z^S))`` (softmax heads: the largest foreground probability)."""
    z = ctx.student.cat_head(logits).detach().float()
    prob = z.sigmoid() if sigmoid else z.softmax(-1)[..., 1:]
    return _assign(ctx).pos.to(z.dtype) * prob.amax(-1)


def kd_weights(ctx: DistillContext, logits: str) -> Tensor:
    """``pos / |P_l|`` per level (``|P_l|`` = positives of that level in the batch), ``[B, P]``."""
    pos = _assign(ctx).pos.float()
    out, start = torch.zeros_like(pos), 0
    for size in ctx.student.level_sizes(logits):
        p = pos[:, start : start + size]
        out[:, start : start + size] = p / p.sum().clamp(min=1)
        start += size
    return out


def vlr_batch(ctx: DistillContext, cfg: LDConfig) -> Tensor:
    s = ctx.student
    a = _assign(ctx)
    gts = target_boxes(ctx.targets, s.priors[0].device)
    rows = []
    for b, g in enumerate(gts):
        thr = a.thresholds[b] if a.thresholds is not None else None
        rows.append(vlr_weights(s.priors, g, cfg.vlr_alpha, cfg.topk, cfg.faithful, thr))
    return torch.stack(rows)


def imitation_mask(ctx: DistillContext, cfg: LDConfig, level: int) -> Tensor:
    def build() -> list[Tensor]:
        s = ctx.student
        a = _assign(ctx)
        priors = torch.cat(list(s.priors))  # [P, 4]
        gts = target_boxes(ctx.targets, priors.device)
        sel = torch.zeros(a.pos.shape, dtype=torch.bool, device=priors.device)  # [B, P]
        for b, g in enumerate(gts):
            if g.numel() == 0:
                continue
            if cfg.imitation == "finegrained":
                iou = box_iou(priors, g)  # [P, G]
                sel[b] = (iou > 0.5 * iou.amax(0, keepdim=True)).any(1)
            else:  # fitnet: prior centre strictly inside a GT
                c = (priors[:, :2] + priors[:, 2:]) / 2
                inside = (c[:, None, 0] > g[None, :, 0]) & (c[:, None, 0] < g[None, :, 2])
                inside &= (c[:, None, 1] > g[None, :, 1]) & (c[:, None, 1] < g[None, :, 3])
                sel[b] = inside.any(1)
        masks, start = [], 0
        for lvl, (tap, size) in enumerate(zip(cfg.im_taps, s.level_sizes(cfg.logits))):
            h, w = s.feats[tap].shape[-2:]
            m = sel[:, start : start + size].reshape(sel.shape[0], h * w, -1).any(-1).reshape(-1, h, w)
            if not a.pos[:, start : start + size].any():
                m = torch.zeros_like(m)  # a level without positives gives 0 (§3.3-5)
            masks.append(m)
            start += size
        return masks

    return ctx.memo(f"ld.im.{cfg.imitation}", build)[level]


def supports(student: nn.Module, teacher: nn.Module) -> str | None:
    """LD runs where both heads predict box distributions (a ``"distribution"`` head key: GFL's ``box_dist``, or
    RetinaNet's with ``dist_reg_max > 0``). Pure delta regressors (RetinaFace, Faster R-CNN's RPN, RetinaNet
    without the branch) have no distribution to distil; the reason says how to add the branch where the model
    can (``model.distribution_hint``)."""
    for side, model in (("student", student), ("teacher", teacher)):
        spec = getattr(model, "head_spec", None)
        if not isinstance(spec, dict):
            return None  # not a detector at all: check_models names what is missing
        if not any(v.kind == "distribution" for v in spec.values()):
            declared = ", ".join(f"{k}: {v.kind}" for k, v in spec.items()) or "none"
            return (f"the {side} ({type(model).__name__}) has no distribution head key 'box_dist' (nor any "
                    f"'distribution' key; declared head_spec: {declared}): LD distils box-edge distributions, "
                    f"which a head regressing deltas does not predict{_hint(model)}")
    return None


@distill_method(LDConfig, supports=supports)
def ld(cfg: LDConfig, student: nn.Module, teacher: nn.Module) -> list[Term]:
    bins = check_models(cfg, student, teacher)
    sigmoid = student.head_spec[cfg.logits].kind == "sigmoid"
    dist, logits = HEAD_PREFIX + cfg.dist_key, HEAD_PREFIX + cfg.logits
    terms = []
    if cfg.ld_weight:
        terms.append(Term("ld", dist, dist, partial(_weighted, T=cfg.ld_T, bins=bins, denom=4.0),
                          weight=cfg.ld_weight, mask=partial(main_weights, logits=cfg.logits, sigmoid=sigmoid)))
    if cfg.kd_weight:
        terms.append(Term("kd", logits, logits, partial(_weighted, T=cfg.kd_T), weight=cfg.kd_weight,
                          mask=partial(kd_weights, logits=cfg.logits)))
    if cfg.vlr_weight:
        terms.append(Term("vlr", dist, dist, partial(_weighted, T=cfg.vlr_T, bins=bins, denom=16.0),
                          weight=cfg.vlr_weight, mask=partial(vlr_batch, cfg=cfg)))
    if cfg.im_weight:
        if cfg.imitation not in ("finegrained", "fitnet"):
            raise ValueError(f"distill.ld.imitation={cfg.imitation!r}: use 'finegrained' or 'fitnet'")
        from detkd.distill.fgfi import check_taps

        check_taps(student, teacher, cfg.im_taps, cfg.im_taps, "ld")
        for level, tap in enumerate(cfg.im_taps):
            terms.append(Term(f"im.{tap}", tap, tap, feat_mse, weight=cfg.im_weight,
                              mask=partial(imitation_mask, cfg=cfg, level=level)))
    return terms


def _weighted(s: Tensor, t: Tensor, mask: Tensor, T: float, bins: int | None = None, denom: float = 1.0) -> Tensor:
    """Term adapter: the mask builder hands over the per-prior weights."""
    return weighted_kd(s, t, mask, T, bins=bins, denom=denom)
