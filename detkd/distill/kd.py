"""Generic temperature KD on class logits (Hinton et al.): the logit baseline for dense detectors.

Term ``kd.kd.cls`` = ``weight · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))`` summed over classes and averaged
over the selected priors. Logits are ``head[<logits>]`` with all levels concatenated, ``[B, P, K]``; the
models' ``head_spec`` says how they become probabilities (RetinaFace: softmax over (background, face);
RetinaNet/GFL: K sigmoids, one Bernoulli KL per class), checked when the terms are built: student and teacher
must declare the same classifier. Prior selection (``[B, P]``, from the
STUDENT's assignment, i.e. the samples its own classification loss uses):
``"assign"`` = pos ∪ neg (default), ``"pos"`` = positives only, ``"all"`` = every prior.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

from torch import Tensor, nn

from detkd.distill.distiller import HEAD_PREFIX, DistillContext, Term, class_logits_reason, class_probability_kind, distill_method
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


def supports(student: nn.Module, teacher: nn.Module) -> str | None:
    """Runs on dense detectors with class logits per prior (softmax or sigmoid ``head_spec`` key); declared
    unsupported on two-stage detectors, whose class scores exist only for sampled RoIs in the second stage."""
    return class_logits_reason(student, teacher, "logit KD")


@distill_method(KDConfig, supports=supports)
def kd(cfg: KDConfig, student: nn.Module, teacher: nn.Module) -> list[Term]:
    if cfg.select not in ("assign", "pos", "all"):
        raise ValueError(f"distill.kd.select={cfg.select!r}: use 'assign', 'pos' or 'all'")
    kind = class_probability_kind(student, teacher, cfg.logits, "distill.kd")
    tap = HEAD_PREFIX + cfg.logits
    mask = None if cfg.select == "all" else partial(assigned_priors, select=cfg.select)
    return [Term("cls", tap, tap, partial(kd_kl, T=cfg.temperature, kind=kind), weight=cfg.weight, mask=mask)]
