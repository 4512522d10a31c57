"""Generic temperature KD on class logits (Hinton et al.): the logit baseline for dense detectors.

Term ``kd.kd.cls`` = ``weight · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))`` summed over classes and averaged
over the selected priors. Logits are ``head[<logits>]`` with all levels concatenated, ``[B, P, K]``; the
models' ``head_spec`` says how they become probabilities (RetinaFace: softmax over (background, face);
RetinaNet/GFL: K sigmoids, one Bernoulli KL per class), checked when the terms are built: student and teacher
must declare the same classifier. Prior selection (``[B, P]``, from the
STUDENT's assignment, i.e. the samples its own classification loss uses):
``"assign"`` = pos ∪ neg (default), ``"pos"`` = positives only, ``"all"`` = every prior.

Generalised to two-stage detectors (Faster R-CNN declares no dense class logits; its classes live in the RoI
head): term ``kd.kd.roi_cls`` = the same ``weight · T² · KL`` on the RoI classifier's softmax ``[R, K+1]``
(background column 0) over the STUDENT's sampled RoIs, which the teacher's second stage scores through the
teacher-query hook (``query_teacher("roi_forward", teacher feats, student RoIs, image sizes)``, DeFeat's
SampleSTU pairing). ``select``: ``"assign"``/``"all"`` = every sampled RoI, ``"pos"`` = foreground RoIs. Both
models must be two-stage with the same class count.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

from torch import Tensor, nn

from detkd.distill.distiller import (
    HEAD_PREFIX,
    DistillContext,
    Term,
    class_logits_reason,
    class_probability_kind,
    distill_method,
)
from detkd.distill.losses import kd_kl


@dataclass
class KDConfig:
    weight: float = 1.0
    temperature: float = 2.0
    logits: str = "cls_logits"  # head key, both models
    select: Literal["assign", "pos", "all"] = "assign"


def assigned_priors(ctx: DistillContext, select: str) -> Tensor | None:
    """``bool [B, P]`` priors of the student's assignment (``None`` for "all")."""
    if select == "all":
        return None
    assign = ctx.student.assign
    if assign is None:
        raise ValueError(f"KD select={select!r} needs the student's assignment: call the student with targets")
    if select == "pos":
        return assign.pos.bool()
    if select == "assign":
        return assign.pos.bool() | assign.neg.bool()
    raise ValueError(f"unknown KD selection {select!r} (use 'assign', 'pos' or 'all')")


def is_two_stage(model: nn.Module) -> bool:
    """A detector whose classes live in a second stage (``roi_forward``) and not in a dense class head."""
    spec = getattr(model, "head_spec", None) or {}
    return callable(getattr(model, "roi_forward", None)) and not any(
        v.kind in ("softmax", "sigmoid") for v in spec.values())


def supports(student: nn.Module, teacher: nn.Module) -> str | None:
    """Runs on dense detectors with class logits per prior (softmax or sigmoid ``head_spec`` key) and on pairs of
    two-stage detectors (RoI classifier, see the module docstring); not across the two kinds."""
    s2, t2 = is_two_stage(student), is_two_stage(teacher)
    if s2 and t2:
        return None
    if s2 != t2:
        return (f"logit KD pairs like classifiers: the {'student' if s2 else 'teacher'} is two-stage (RoI classes) "
                f"and the {'teacher' if s2 else 'student'} is dense")
    return class_logits_reason(student, teacher, "logit KD")


def roi_kd(_s: Tensor, _t: Tensor, mask: tuple[Tensor, Tensor, Tensor], T: float, select: str) -> Tensor:
    """KD on the RoI classifier: ``mask`` = (student logits ``[R, K+1]``, teacher logits on the same RoIs, student
    RoI labels ``[R]``); ``select="pos"`` keeps the foreground RoIs."""
    s_logits, t_logits, labels = mask
    keep = labels > 0 if select == "pos" else None
    return kd_kl(s_logits, t_logits, T=T, mask=keep, kind="softmax")


def roi_kd_terms(cfg: KDConfig, student: nn.Module, teacher: nn.Module) -> list[Term]:
    from detkd.distill.defeat import roi_logits  # the shared SampleSTU query (student RoIs, teacher scores)

    ks, kt = getattr(student, "num_classes", None), getattr(teacher, "num_classes", None)
    if ks != kt:
        raise ValueError(f"distill.kd: the student's RoI head has {ks} classes but the teacher's {kt}")
    # the term's taps only satisfy the term layout (identical shapes on one family); the logits come via the mask
    tap = HEAD_PREFIX + next(iter(student.head_spec))
    return [Term("roi_cls", tap, tap, partial(roi_kd, T=cfg.temperature, select=cfg.select), weight=cfg.weight,
                 mask=roi_logits)]


@distill_method(KDConfig, supports=supports)
def kd(cfg: KDConfig, student: nn.Module, teacher: nn.Module) -> list[Term]:
    if cfg.select not in ("assign", "pos", "all"):
        raise ValueError(f"distill.kd.select={cfg.select!r}: use 'assign', 'pos' or 'all'")
    if is_two_stage(student) and is_two_stage(teacher):
        return roi_kd_terms(cfg, student, teacher)
    kind = class_probability_kind(student, teacher, cfg.logits, "distill.kd")
    tap = HEAD_PREFIX + cfg.logits
    mask = None if cfg.select == "all" else partial(assigned_priors, select=cfg.select)
    return [Term("cls", tap, tap, partial(kd_kl, T=cfg.temperature, kind=kind), weight=cfg.weight, mask=mask)]
