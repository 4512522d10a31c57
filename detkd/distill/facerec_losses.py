"""Pure loss functions of the face-recognition objectives (METHODS.md §5.4, §5.5, §5.8).

Tensors in, tensors out; no modules, no state. Shapes:

* ``emb``      ``[B, D]``  raw (un-normalised) student embeddings
* ``teacher``  ``[B, D]``  raw teacher embeddings (``t_i``)
* ``weight``   ``[K, D]``  classifier rows (class centres), normalised here before use
* ``labels``   ``[B]``     int64 class ids in ``[0, K)``
* ``cos``      ``[B, K]``  cosine of every sample to every class centre

Conventions:

* Logits are ``z_ij = s·cos θ_ij``; the ArcFace margin changes only the ground-truth column to
  ``s·cos(arccos(cos θ) + m)``. ``cos`` is clamped to ``[-1+1e-7, 1-1e-7]`` before ``arccos`` (the
  reference's MXNet yields NaN there); there is no "easy margin" fallback when ``θ + m > π``
  (faithful to the reference, §5.4).
* Every margin may be a float or a per-sample ``[B]`` tensor.
* Every denominator carries an explicit guard (§5.8); ``faithful=True`` turns the MarginDistillation
  guard/clamp off to reproduce the released behaviour.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from detkd.models.facerec import arcface_target_logit  # s·cos(arccos(clamp(cos)) + m), the §5.4 target logit

COS_EPS = 1e-7  # clamp of cos before arccos (as in arcface_target_logit)
DIV_EPS = 1e-12  # guard of the MarginDistillation batch maximum D


# ----------------------------------------------------------------------------------------- logits (§5.4)


def cosine_matrix(emb: Tensor, weight: Tensor) -> Tensor:
    """``cos θ_ij`` between every sample and every class centre: ``[B, K]``."""
    return F.normalize(emb, dim=1) @ F.normalize(weight, dim=1).t()


def margin_logits(cos: Tensor, labels: Tensor, s: float, m: float | Tensor) -> Tensor:
    """ArcFace logits ``[B, K]``: ``s·cos`` everywhere, ``s·cos(θ + m_i)`` on each sample's GT column."""
    target_cos = cos.gather(1, labels[:, None]).squeeze(1)  # [B]
    target = arcface_target_logit(target_cos, s, m)  # [B]
    logits = s * cos
    return logits.scatter(1, labels[:, None], target[:, None].to(logits.dtype))


def arcface_loss(cos: Tensor, labels: Tensor, s: float, m: float | Tensor) -> Tensor:
    """Mean softmax cross-entropy of the ArcFace logits (objective 1 and the CE of 2 and 4)."""
    return F.cross_entropy(margin_logits(cos, labels, s, m), labels)


# ------------------------------------------------------------------------------ angular distillation (§5.5.2)


def angular_term(emb: Tensor, teacher: Tensor) -> Tensor:
    """``mean_i (1 − cos(x_i, t_i))``; 0 when every student embedding is a positive multiple of its teacher's."""
    return (1.0 - F.cosine_similarity(emb, teacher, dim=1, eps=1e-12)).mean()


# --------------------------------------------------------------------------- MarginDistillation (§5.5.5)


def teacher_centre_cosine(teacher: Tensor, centres: Tensor, labels: Tensor) -> Tensor:
    """``d_i = ⟨t_i/‖t_i‖, W_{y_i}/‖W_{y_i}‖⟩``: each sample's teacher cosine to its own class centre, ``[B]``."""
    own = F.normalize(centres[labels], dim=1)  # [B, D]
    return (F.normalize(teacher, dim=1) * own).sum(1)


def md_margins(d: Tensor, m_min: float, m_max: float, *, faithful: bool = False, eps: float = DIV_EPS) -> Tensor:
    """Per-sample margins ``m_i = m_min + (m_max − m_min)·d_i / D`` with ``D = max_batch d``.

    Clean (default): ``D = max(D, eps)`` and margins clamped to ``[0, m_max]``. ``faithful=True`` keeps the
    released behaviour (no guard, no clamp: D ≤ 0 gives inf/NaN or inverted margins).
    """
    d = d.detach()
    big_d = d.max()
    if not faithful:
        big_d = big_d.clamp_min(eps)
    m = m_min + (m_max - m_min) * d / big_d
    if not faithful:
        m = m.clamp(0.0, m_max)
    return m


# ------------------------------------------------------------------------------ "Margin-based with T" (§5.5.4)


def margin_t_loss(
    logits: Tensor, teacher_logits: Tensor, labels: Tensor, T: float, alpha: float
) -> tuple[Tensor, Tensor]:
    """The intended KD objective, returned as its two weighted parts ``(ce, kd)``:

    ``ce = (1−α)·CE(z, y)``, ``kd = α·T²·KL(softmax(z^T/T) ‖ softmax(z/T))`` (batch mean of the KL sum).
    """
    ce = (1.0 - alpha) * F.cross_entropy(logits, labels)
    log_p = F.log_softmax(logits / T, dim=1)
    log_q = F.log_softmax(teacher_logits.detach() / T, dim=1)
    kl = F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
    return ce, alpha * T * T * kl


def margin_t_faithful(logits: Tensor, labels: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """The released (bugged) objective: ``(CE(z, y), CE(z/T, ⌊y/T⌋))``; no teacher, no α (§5.5.4 a, b)."""
    coarse = torch.div(labels, T, rounding_mode="floor").long()
    return F.cross_entropy(logits, labels), F.cross_entropy(logits / T, coarse)


# ------------------------------------------------------------------------------ triplet distillation (§5.5.3)


def teacher_triplet_delta(ta: Tensor, tp: Tensor, tn: Tensor, kind: str) -> Tensor:
    """Teacher gap per triplet, ``[T]``: L2 ``relu(‖t̂a−t̂n‖² − ‖t̂a−t̂p‖²)``, cos ``relu(∠(t̂a,t̂n) − ∠(t̂a,t̂p))``."""
    ta, tp, tn = (F.normalize(t, dim=1) for t in (ta, tp, tn))
    if kind == "l2":
        gap = (ta - tn).pow(2).sum(1) - (ta - tp).pow(2).sum(1)
    elif kind == "cos":
        gap = _angle(ta, tn, eps=0.0) - _angle(ta, tp, eps=0.0)
    else:
        raise ValueError(f"triplet kind must be 'l2' or 'cos', got {kind!r}")
    return gap.clamp_min(0.0)


def triplet_margins(delta: Tensor, m_min: float, m_max: float) -> Tensor:
    """``m_min + (m_max − m_min)·δ / max_batch δ``; every margin is ``m_min`` when ``max δ = 0`` (§5.8)."""
    top = delta.max()
    if top <= 0:
        return torch.full_like(delta, m_min)
    return m_min + (m_max - m_min) * delta / top


def triplet_loss(sa: Tensor, sp: Tensor, sn: Tensor, margin: Tensor | float, kind: str) -> Tensor:
    """``mean relu(d(a,p) − d(a,n) + margin)`` with d = squared L2 (``l2``) or angle (``cos``) of normalised embeddings."""
    sa, sp, sn = (F.normalize(x, dim=1) for x in (sa, sp, sn))
    if kind == "l2":
        d_ap, d_an = (sa - sp).pow(2).sum(1), (sa - sn).pow(2).sum(1)
    elif kind == "cos":
        d_ap, d_an = _angle(sa, sp), _angle(sa, sn)
    else:
        raise ValueError(f"triplet kind must be 'l2' or 'cos', got {kind!r}")
    return F.relu(d_ap - d_an + margin).mean()


def _angle(u: Tensor, v: Tensor, eps: float = COS_EPS) -> Tensor:
    """Angle between rows of two normalised matrices, ``[N]``; ``eps > 0`` keeps ``acos`` differentiable."""
    return torch.acos((u * v).sum(1).clamp(-1.0 + eps, 1.0 - eps))
