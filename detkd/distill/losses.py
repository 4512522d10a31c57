"""Distillation losses: pure functions, tensors in, scalar out, every normalisation written down.

Conventions (METHODS.md §0):
- feature maps are ``[B, C, H, W]``; location masks are ``[B, H, W]`` (bool or {0,1} float) and broadcast over
  channels; per-prior tensors are ``[B, P, K]`` with prior masks ``[B, P]``.
- "teacher is q, student is p": ``KL(q‖p) = Σ_k q_k (log q_k − log p_k)``.
- teacher tensors are used as given; the caller runs the teacher under ``torch.no_grad()``. Student tensors keep
  their graph.
- every denominator is guarded, so an empty selection gives exactly 0 (never NaN).

Normalisation table (the part that differs between papers):

| function / ``denom``              | numerator                                  | denominator                    |
|-----------------------------------|--------------------------------------------|--------------------------------|
| ``masked_feat_l2(denom="tdkd")``  | Σ over b, c, masked (y,x) of (s − t)²      | max(1, 2·#masked locations)    |
| ``masked_feat_l2(denom="fgfi")``  | same                                       | max(1, 2·#masked locations)    |
| ``masked_feat_l2(denom="defeat")``| same                                       | max(1, 2·C·#masked locations)  |
| ``prob_l2_uncertain``             | Σ over selected (b, p, k) entries of Δp²   | max(1, #selected entries)      |
| ``kd_kl`` (softmax or sigmoid)    | T²·Σ over selected priors of Σ_k KL        | max(1, #selected priors)       |
| ``feat_mse``                      | Σ over b, c, masked (y,x) of (s − t)²      | max(1, C·#masked locations)    |

(FGFI's reference has no guard; with at least one GT per image — always the case on VOC — the two agree.)
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

FeatDenom = Literal["tdkd", "fgfi", "defeat"]
ProbKind = Literal["softmax", "sigmoid"]


def _check_pair(s: Tensor, t: Tensor, what: str) -> None:
    if s.shape != t.shape:
        raise ValueError(f"{what}: student shape {tuple(s.shape)} != teacher shape {tuple(t.shape)}")


def _location_mask(mask: Tensor, feat: Tensor, what: str) -> Tensor:
    """A ``[B, H, W]`` mask as float ``[B, 1, H, W]`` on the feature's device and dtype."""
    b, _, h, w = feat.shape
    if mask.shape != (b, h, w):
        raise ValueError(f"{what}: mask shape {tuple(mask.shape)} does not match feature [B,H,W] = {(b, h, w)}")
    return mask.to(device=feat.device, dtype=feat.dtype).unsqueeze(1)


def masked_feat_l2(s: Tensor, t: Tensor, mask: Tensor | None, denom: FeatDenom = "tdkd") -> Tensor:
    """Masked squared feature difference (TDKD §1.7, FGFI §2.4, DeFeat §4.4).

    ``s``, ``t`` ``[B, C, H, W]``; ``mask`` ``[B, H, W]`` (``None`` = every location). Numerator: Σ over
    batch, channels and masked locations of ``(s − t)²``. Denominator: ``max(1, 2·n)`` with ``n`` = #masked
    locations (channels not counted) for ``"tdkd"``/``"fgfi"``; ``max(1, 2·C·n)`` for ``"defeat"``.
    """
    _check_pair(s, t, "masked_feat_l2")
    diff2 = (s.float() - t.float()).pow(2)  # [B, C, H, W], fp32 even under autocast
    if mask is None:
        m = None
        n = s.new_tensor(float(s.shape[0] * s.shape[2] * s.shape[3]))
        num = diff2.sum()
    else:
        m = _location_mask(mask, diff2, "masked_feat_l2")  # [B, 1, H, W]
        n = m.sum()
        num = (diff2 * m).sum()
    if denom in ("tdkd", "fgfi"):
        den = 2.0 * n
    elif denom == "defeat":
        den = 2.0 * s.shape[1] * n
    else:
        raise ValueError(f"masked_feat_l2: unknown denom {denom!r} (use 'tdkd', 'fgfi' or 'defeat')")
    return num / den.clamp(min=1.0)


def prob_l2_uncertain(p_s: Tensor, p_t: Tensor, lo: float = 0.1, hi: float = 0.9) -> Tensor:
    """TDKD probability loss (§1.7): squared probability difference on teacher-uncertain entries.

    ``p_s``, ``p_t`` ``[..., K]`` probabilities (student not detached). Selected entries: ``lo < p_t < hi``
    (strict, per entry, so a 2-way prior contributes both columns). Returns Σ_S (p_t − p_s)² / max(1, |S|).
    """
    _check_pair(p_s, p_t, "prob_l2_uncertain")
    sel = (p_t > lo) & (p_t < hi)
    num = ((p_t.float() - p_s.float()).pow(2) * sel).sum()
    return num / sel.sum().clamp(min=1).to(num.dtype)


def class_probs(logits: Tensor, kind: ProbKind = "softmax", T: float = 1.0) -> Tensor:
    """Class probabilities of logits ``[..., K]`` at temperature ``T`` (fp32): a softmax over the last axis
    (``"softmax"``, background column included) or K independent sigmoids (``"sigmoid"``)."""
    z = logits.float() if T == 1 else logits.float() / T
    if kind == "softmax":
        return z.softmax(-1)
    if kind == "sigmoid":
        return z.sigmoid()
    raise ValueError(f"unknown class probability kind {kind!r} (use 'softmax' or 'sigmoid')")


def kd_kl(
    student_logits: Tensor, teacher_logits: Tensor, T: float = 1.0, mask: Tensor | None = None,
    kind: ProbKind = "softmax",
) -> Tensor:
    """Temperature KD on class logits: ``T²·KL(q ‖ p)`` with ``q``, ``p`` the teacher / student probabilities.

    ``student_logits``, ``teacher_logits`` ``[..., K]``. ``kind="softmax"``: ``q = softmax(t/T)``,
    ``KL = Σ_k q_k (log q_k − log p_k)``. ``kind="sigmoid"`` (K independent classifiers): ``q_k = σ(t_k/T)``,
    ``KL = Σ_k [q_k (log q_k − log p_k) + (1 − q_k)(log(1 − q_k) − log(1 − p_k))]`` (one Bernoulli KL per
    column). ``mask`` selects the leading positions (``[...]``, bool), ``None`` = all. KL is summed over
    classes and averaged over the selected positions (``max(1, n)``).
    """
    _check_pair(student_logits, teacher_logits, "kd_kl")
    if T <= 0:
        raise ValueError(f"kd_kl: temperature must be > 0, got {T}")
    if kind == "softmax":
        log_p = F.log_softmax(student_logits.float() / T, dim=-1)
        log_q = F.log_softmax(teacher_logits.float() / T, dim=-1)
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # [...]
    elif kind == "sigmoid":
        zs, zt = student_logits.float() / T, teacher_logits.float() / T
        q = zt.sigmoid()
        # log σ(z) = -softplus(-z), log(1 - σ(z)) = -softplus(z): stable for large |z|
        kl = (q * (F.softplus(-zs) - F.softplus(-zt)) + (1 - q) * (F.softplus(zs) - F.softplus(zt))).sum(-1)
    else:
        raise ValueError(f"kd_kl: unknown kind {kind!r} (use 'softmax' or 'sigmoid')")
    if mask is None:
        return kl.mean() * T * T
    if mask.shape != kl.shape:
        raise ValueError(f"kd_kl: mask shape {tuple(mask.shape)} != logits leading shape {tuple(kl.shape)}")
    mask = mask.to(kl.device, torch.bool)
    return (kl * mask).sum() / mask.sum().clamp(min=1).to(kl.dtype) * T * T


def feat_mse(s: Tensor, t: Tensor, mask: Tensor | None = None) -> Tensor:
    """FitNets hint loss: mean squared error over every element (``mask`` ``[B, H, W]`` restricts locations;
    the mean is then over the C·#masked elements, guarded)."""
    _check_pair(s, t, "feat_mse")
    if mask is None:
        return F.mse_loss(s.float(), t.float())
    diff2 = (s.float() - t.float()).pow(2)  # [B, C, H, W]
    m = _location_mask(mask, diff2, "feat_mse")
    num = (diff2 * m).sum()
    return num / (m.sum() * s.shape[1]).clamp(min=1.0)


# ------------------------------------------------------------------------ LD (§3.3) and DeFeat head (§4.5)


def kd_rows(p_logits: Tensor, q_logits: Tensor, T: float) -> Tensor:
    """LD's KD row loss (§3.3): ``T² · (1/n) · Σ_k q_k (log q_k − log p_k)`` per row, ``[...]`` from ``[..., n]``.

    ``q = softmax(q_logits/T)`` (teacher, detached here), ``p = softmax(p_logits/T)`` (student). Note the 1/n
    ("mean over bins/classes") factor of the released code. Computed in float32.
    """
    _check_pair(p_logits, q_logits, "kd_rows")
    if T <= 0:
        raise ValueError(f"kd_rows: temperature must be > 0, got {T}")
    log_p = F.log_softmax(p_logits.float() / T, dim=-1)
    log_q = F.log_softmax(q_logits.detach().float() / T, dim=-1)
    return (log_q.exp() * (log_q - log_p)).mean(-1) * (T * T)


def weighted_kd(
    s: Tensor, t: Tensor, weight: Tensor, T: float, bins: int | None = None, denom: float = 1.0
) -> Tensor:
    """``Σ_i weight_i · Σ_e kd_rows(s_{i,e}, t_{i,e}, T) / denom`` — every LD term (§3.3).

    ``s``, ``t`` ``[B, P, K]`` logits; with ``bins`` the last axis is split into ``K / bins`` rows (box edges of a
    ``4·(reg_max+1)`` distribution) that are summed per prior. ``weight`` ``[B, P]`` float (0 = not selected):
    main LD ``pos · ω`` with ``denom 4``; VLR LD the VLR IoU weights with ``denom 16``; KD ``pos / |P_l|``.
    An all-zero weight gives an exact 0 that keeps the graph (§3.7).
    """
    _check_pair(s, t, "weighted_kd")
    if weight.shape != s.shape[:-1]:
        raise ValueError(
            f"weighted_kd: weight shape {tuple(weight.shape)} != logits leading shape {tuple(s.shape[:-1])}"
        )
    if bins is not None and s.shape[-1] % bins:
        raise ValueError(f"weighted_kd: last axis {s.shape[-1]} is not a multiple of {bins} bins")
    # only the weighted priors (positives, the VLR: a small part of a dense head) are computed; an empty
    # selection still gives a 0 connected to ``s``'s graph
    sel = weight != 0
    s, t, w = s[sel], t[sel], weight[sel]  # [N, K], [N]
    if bins is not None:
        s, t = s.unflatten(-1, (-1, bins)), t.unflatten(-1, (-1, bins))
    rows = kd_rows(s, t, T)  # [N] or [N, E]
    if bins is not None:
        rows = rows.sum(-1)
    return (rows * w.to(rows)).sum() / denom


def decoupled_roi_kd(
    s_logits: Tensor, t_logits: Tensor, labels: Tensor, T: float = 1.0, background: int = 0
) -> tuple[Tensor, Tensor]:
    """DeFeat head KD (§4.5): ``(KL_set(P), KL_set(N))`` on RoI softmax logits ``[R, K+1]``.

    ``KL_set(X) = T² · Σ_{r∈X} Σ_k q (log q − log p) / |X|``, 0 for an empty set; ``P`` = RoIs whose label is
    not ``background`` (detkd: 0), ``N`` = background RoIs. ``labels`` int64 ``[R]`` must come from the sampling
    that produced the RoIs (the clean SampleSTU pairing; §4.11-2).
    """
    if labels.shape != s_logits.shape[:-1]:
        raise ValueError(f"decoupled_roi_kd: labels {tuple(labels.shape)} vs logits {tuple(s_logits.shape)}")
    neg = labels == background
    return kd_kl(s_logits, t_logits, T, mask=~neg), kd_kl(s_logits, t_logits, T, mask=neg)
