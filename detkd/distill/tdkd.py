"""TDKD: Task Decoupled Knowledge Distillation for lightweight face detectors (METHODS.md §1.7).

Terms (``l`` over ``levels``, default ``p3, p4, p5`` = strides 8/16/32; student taps are the SSH outputs, the
teacher taps its per-task conv blocks):

- ``kd.tdkd.cls.<l>`` = ``masked_feat_l2(A^cls_l(S_l), T["cls_feat.<l>"], M^cls_l)``
- ``kd.tdkd.loc.<l>`` = ``masked_feat_l2(A^loc_l(S_l), T["reg_feat.<l>"], M^loc_l)``
  each ``× feat_weight × scale``, so their sum is ``d_feat · scale · L_feat`` with ``L_feat = Σ_l (cls + loc)``;
  ``scale = 1`` (``"fixed"``, the reference's current HEAD) or ``sg(L_loc) / sg(L_feat)`` (``"dynamic"``, the
  first release, which produced the released distilled weights; 0 when ``L_feat == 0``). ``L_loc`` is the
  student's unweighted box loss ``raw_losses["loc"]``.
- ``kd.tdkd.prob`` = ``prob_weight · Σ_S (p_t − p_s)² / max(1, |S|)`` over all priors and class columns,
  ``S = {prob_band[0] < p_t < prob_band[1]}`` (strict). Probabilities follow the models' ``head_spec``
  (RetinaFace: softmax over both columns; a sigmoid head: one sigmoid per column), checked at build time.

Masks come from the STUDENT's assignment (§1.6 matching, ``neg_rank`` = the detection loss's hard-negative
ranking): ``M^cls`` = locations of pos ∪ top-min(3·n_pos, P−1) hard negatives, ``M^loc`` = locations of
positives, split by the actual level sizes (any input size).

Adapters ``A`` are 1×1 convs 64→64 without bias, one per level and task (6). Default (``faithful=False``):
trainable, as the paper describes. ``faithful=True`` = the released code, whose adapters were never in the
optimiser: frozen projections with PyTorch's default init, seeded (``adapter_seed + i``). The README numbers
(87.1 → 88.9 Easy) come from the faithful variant with the dynamic scale, fine-tuning a converged student.

Generalised beyond RetinaFace (the method × detector matrix, ``detkd list methods --matrix``): on dense
detectors with task towers but no hard-negative mining (RetinaNet, GFL: ``levels`` = their ``p3..p7``, teacher
taps their towers' ``cls_feat.<l>`` / ``reg_feat.<l>``), the negatives of ``M^cls`` are ranked by the student's
background classification loss (``background_loss_rank``; sigmoid heads: ``Σ_k softplus(z_k)``), and the
dynamic scale reads the box loss ``raw_losses["box"]`` when the model reports no ``"loc"``.

Generalised to Faster R-CNN through its RPN (``logits`` resolves to ``rpn.objectness`` when the models have no
``cls_logits``): the RPN objectness is a dense per-anchor one-class sigmoid with its own assignment, i.e. the
face/background classifier of RetinaFace with one sigmoid column instead of a 2-way softmax, so every part of
TDKD has its counterpart there, while the RoI head's classes (sampled RoIs only) have none:

- positives = every anchor the RPN matcher calls positive (IoU ≥ 0.7 or a GT's best anchor: ``labels > 0``), not
  the random 256-anchor sample of the RPN loss (a random subset would make the masks random); negatives of
  ``M^cls`` = the top ``neg_ratio · n_pos`` non-positive, non-ignored anchors ranked by the student's objectness
  loss as background (``softplus(z)``, ``background_loss_rank``);
- teacher task features = the RPN's shared 3x3 conv output ``rpn_feat.<level>`` for BOTH tasks (the RPN has no
  separate towers: its objectness and deltas read the same map); the two student adapters still decouple the
  tasks, exactly as the reference's student feeds the same SSH map to both (§1.11-2); student taps = the
  RPN's inputs (``c5`` or ``p2..p6``);
- probability term over every anchor's objectness sigmoid in the band; dynamic scale from the RPN box loss
  ``raw_losses["rpn_box"]``.

The teacher's task-feature prefixes are ``cls_feat`` / ``reg_feat`` when it declares them, else ``rpn_feat`` for
both (``task_prefixes``); ``supports`` declares a pair unsupported when either side has no dense classifier
(softmax, sigmoid or objectness head key).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn
import torch.nn.functional as F

from detkd.distill.adapters import AdapterSpec
from detkd.distill.distiller import (
    HEAD_PREFIX,
    DistillContext,
    Term,
    class_probability_kind,
    distill_method,
    head_key,
)
from detkd.distill.losses import class_probs, masked_feat_l2, prob_l2_uncertain
from detkd.distill.masks import tdkd_location_masks

TASKS = (("cls", "cls_feat"), ("loc", "reg_feat"))  # (term name, teacher tap prefix); the mask index follows
RPN_KEY, RPN_PREFIX = "rpn.objectness", "rpn_feat"  # Faster R-CNN: the RPN's classifier and shared conv output
DENSE_KINDS = ("softmax", "sigmoid", "objectness")


@dataclass
class TDKDConfig:
    feat_weight: float = 1.0  # d_feat
    prob_weight: float = 50.0  # d_prob
    scale: Literal["dynamic", "fixed"] = "dynamic"
    neg_ratio: int = 3
    prob_band: tuple[float, float] = (0.1, 0.9)
    faithful: bool = False  # True: frozen seeded random adapters (released code)
    adapter_seed: int = 0
    levels: list[str] = field(default_factory=lambda: ["p3", "p4", "p5"])
    logits: str = "cls_logits"  # class logits (softmax or sigmoid); "rpn.objectness" is used where it is missing
    loc_key: str = "loc"  # student raw_losses key of the unweighted box loss


@torch.no_grad()
def background_loss_rank(logits: Tensor, kind: str, excluded: Tensor) -> Tensor:
    """``neg_rank [B, P]`` (int64, 0 = hardest) from class logits ``[B, P, K]``: priors ranked per image by their
    classification loss as background, descending; ``excluded`` priors (``bool [B, P]``: positives, ignored)
    rank last. Softmax: ``logsumexp(z) − z_0``; sigmoid: ``Σ_k softplus(z_k)`` (BCE against all-zero targets)."""
    z = logits.detach().float()
    loss = torch.logsumexp(z, -1) - z[..., 0] if kind == "softmax" else F.softplus(z).sum(-1)
    loss = loss.masked_fill(excluded, float("-inf"))
    order = torch.sort(loss, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return rank


def level_masks(ctx: DistillContext, cfg: TDKDConfig, kind: str = "softmax") -> list[tuple[Tensor, Tensor]]:
    """Per level ``(cls, loc)`` location masks. Generalisation (models whose loss mines no hard negatives, e.g.
    RetinaNet's focal loss or GFL's QFL, leave ``assign.neg_rank`` empty): the negatives are ranked here by the
    student's own background classification loss (``background_loss_rank``), the same criterion RetinaFace's
    hard-negative mining uses, and the top ``neg_ratio · n_pos`` of them enter ``M^cls``."""
    inp = ctx.mask_inputs(cfg.levels, what="TDKD masks")
    if cfg.logits == RPN_KEY:  # every matcher positive, not the RPN loss's random sample (module docstring)
        inp = replace(inp, assign=replace(inp.assign, pos=inp.assign.labels > 0))
    if inp.assign.neg_rank is None:
        excluded = inp.assign.pos.bool() | inp.assign.ignore.bool()
        rank = background_loss_rank(ctx.student.cat_head(cfg.logits), kind, excluded)
        inp = replace(inp, assign=replace(inp.assign, neg_rank=rank))
    return tdkd_location_masks(inp, neg_ratio=cfg.neg_ratio)


def task_mask(ctx: DistillContext, cfg: TDKDConfig, level: int, task: int, kind: str = "softmax") -> Tensor:
    """``bool [B, H, W]``: task 0 = cls mask, 1 = loc mask of ``level`` (computed once per batch)."""
    return ctx.memo("tdkd.masks", lambda: level_masks(ctx, cfg, kind))[level][task]


def prob_loss(s_logits: Tensor, t_logits: Tensor, mask: Tensor | None = None, band=(0.1, 0.9),
              kind: str = "softmax") -> Tensor:
    """TDKD probability term on logits ``[B, P, K]`` (``kind``: softmax over the class axis or per-column
    sigmoids; ``mask`` unused)."""
    return prob_l2_uncertain(class_probs(s_logits, kind), class_probs(t_logits, kind), band[0], band[1])


def loc_over_feat(l_feat: Tensor, ctx: DistillContext, loc_key: str = "loc") -> Tensor:
    """Dynamic scale ``sg(L_loc) / sg(L_feat)``, 0 when ``L_feat == 0`` (no positives in the batch)."""
    raw = ctx.student.raw_losses
    if loc_key == "loc" and "loc" not in raw:  # generalisation: RetinaNet / GFL "box", Faster R-CNN's RPN "rpn_box"
        loc_key = next((k for k in ("box", "rpn_box") if k in raw), loc_key)
    if loc_key not in raw:
        raise KeyError(
            f"TDKD scale='dynamic' needs the student's unweighted box loss raw_losses[{loc_key!r}] "
            f"(has: {sorted(raw)}); use scale='fixed' for models without it"
        )
    l_loc = raw[loc_key].detach().float()
    l_feat = l_feat.detach().float()
    safe = l_feat.clamp(min=torch.finfo(l_feat.dtype).tiny)
    return torch.where(l_feat > 0, l_loc / safe, torch.zeros_like(l_feat))


def supports(student: nn.Module, teacher: nn.Module) -> str | None:
    """Runs where both models have a dense per-prior classifier: class logits (softmax / sigmoid) or, on Faster
    R-CNN, the RPN objectness (see the module docstring)."""
    for side, model in (("student", student), ("teacher", teacher)):
        spec = getattr(model, "head_spec", None)
        if not isinstance(spec, dict):
            return None  # not a detector at all: the builder's own start-up check names what is missing
        if not any(v.kind in DENSE_KINDS for v in spec.values()):
            declared = ", ".join(f"{k}: {v.kind}" for k, v in spec.items()) or "none"
            return (f"TDKD (masks from the per-prior assignment, probability term) needs a dense per-prior "
                    f"classifier (class logits or RPN objectness), and the {side} {type(model).__name__} declares "
                    f"none; declared head_spec: {declared}")
    return None


def logits_key(cfg: TDKDConfig, student: nn.Module) -> str:
    """``cfg.logits``, or ``rpn.objectness`` when the default ``cls_logits`` is missing and the RPN's is there."""
    spec = getattr(student, "head_spec", None) or {}
    if cfg.logits not in spec and cfg.logits == "cls_logits" and RPN_KEY in spec:
        return RPN_KEY
    return cfg.logits


def probability_kind(student: nn.Module, teacher: nn.Module, key: str) -> str:
    """``"softmax"`` / ``"sigmoid"`` of ``head[key]`` on both sides; an RPN objectness (one logit) is a sigmoid."""
    kinds = {head_key(m, key, side, "distill.tdkd").kind for side, m in (("student", student), ("teacher", teacher))}
    if kinds == {"objectness"}:
        return "sigmoid"
    return class_probability_kind(student, teacher, key, "distill.tdkd")


def task_prefixes(teacher: nn.Module, levels: list[str]) -> tuple[str, str]:
    """The teacher's (cls, loc) task-feature tap prefixes: its towers ``cls_feat`` / ``reg_feat`` where it declares
    them, else the RPN's shared conv ``rpn_feat`` for both tasks (Faster R-CNN)."""
    channels = getattr(teacher, "channels", None) or {}
    tower = tuple(p for _, p in TASKS)
    if not levels or any(f"{p}.{levels[0]}" in channels for p in tower) or f"{RPN_PREFIX}.{levels[0]}" not in channels:
        return tower  # towers, or neither (the tap check then names the missing tap)
    return RPN_PREFIX, RPN_PREFIX


@distill_method(TDKDConfig, supports=supports)
def tdkd(cfg: TDKDConfig, student: nn.Module, teacher: nn.Module) -> list[Term]:
    if cfg.scale not in ("dynamic", "fixed"):
        raise ValueError(f"distill.tdkd.scale={cfg.scale!r}: use 'dynamic' or 'fixed'")
    lo, hi = cfg.prob_band
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"distill.tdkd.prob_band={cfg.prob_band}: need 0 <= lo < hi <= 1")
    cfg = replace(cfg, logits=logits_key(cfg, student))
    kind = probability_kind(student, teacher, cfg.logits)
    scale = partial(loc_over_feat, loc_key=cfg.loc_key) if cfg.scale == "dynamic" else None
    prefixes = task_prefixes(teacher, list(cfg.levels))
    terms = []
    for level, tap in enumerate(cfg.levels):
        for task, (name, teacher_prefix) in enumerate(zip((n for n, _ in TASKS), prefixes)):
            adapter = AdapterSpec(
                key=f"tdkd_{name}_{tap}",
                kind="conv1x1",
                bias=False,
                frozen=cfg.faithful,
                seed=cfg.adapter_seed + 2 * level + task,
            )
            terms.append(
                Term(
                    f"{name}.{tap}",
                    student=tap,
                    teacher=f"{teacher_prefix}.{tap}",
                    loss=partial(masked_feat_l2, denom="tdkd"),
                    weight=cfg.feat_weight,
                    mask=partial(task_mask, cfg=cfg, level=level, task=task, kind=kind),
                    adapter=adapter,
                    group="tdkd.feat",
                    group_scale=scale,
                )
            )
    logits = HEAD_PREFIX + cfg.logits
    terms.append(Term("prob", logits, logits, partial(prob_loss, band=(lo, hi), kind=kind), weight=cfg.prob_weight))
    return terms
