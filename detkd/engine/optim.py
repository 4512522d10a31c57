"""Optimizers and per-iteration learning-rate schedules built from ``OptimConfig`` / ``ScheduleConfig``.

Conventions:

* Only parameters with ``requires_grad=True`` are optimised (frozen adapters, e.g. TDKD's faithful random
  projections, and frozen teacher centres stay out of the optimizer).
* Weight decay applies to **all** trainable parameters (BN and biases included), as the TDKD and
  MarginDistillation recipes do (METHODS §1.8, §5). The FGFI recipe (wd 0 on biases, bias lr ×2) is reachable
  through two optional ``OptimConfig`` fields read with ``getattr``: ``bias_lr_mult`` (default 1.0) and
  ``bias_weight_decay`` (default: same as ``weight_decay``). They need named parameters (pass a module).
* The schedule is stepped once per **iteration**. ``lr(it) = base_lr · warmup(it) · main(it)`` where
  ``warmup`` ramps linearly from ``warmup_factor`` to 1 over ``warmup_iters`` and ``main`` is
  step (milestones in epochs, fractions allowed, converted with ``round(m · iters_per_epoch)``; ×gamma at each
  milestone reached), cosine (from 1 at iteration 0 to ``min_lr_factor`` at ``epochs · iters_per_epoch``) or
  constant.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["param_groups", "build_optimizer", "lr_factor", "build_scheduler", "milestone_iters"]


def param_groups(params: nn.Module | Iterable, cfg: Any) -> list[dict]:
    """Trainable parameter groups. A module gives named groups (``weights`` and ``biases``) so that the
    optional bias lr multiplier / bias weight decay can apply; an iterable of tensors or of group dicts is
    passed through (frozen tensors dropped)."""
    bias_lr_mult = float(getattr(cfg, "bias_lr_mult", 1.0))
    bias_wd = getattr(cfg, "bias_weight_decay", None)
    if isinstance(params, nn.Module):
        weights, biases = [], []
        for name, p in params.named_parameters():
            if not p.requires_grad:
                continue
            (biases if name.endswith("bias") else weights).append(p)
        groups = [{"name": "weights", "params": weights}]
        bias_group = {"name": "biases", "params": biases}
        if bias_lr_mult != 1.0:
            bias_group["lr"] = cfg.lr * bias_lr_mult
        if bias_wd is not None:
            bias_group["weight_decay"] = float(bias_wd)
        groups.append(bias_group)
        groups = [g for g in groups if g["params"]]
    else:
        params = list(params)
        if params and isinstance(params[0], dict):
            groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in params]
        else:
            groups = [{"name": "all", "params": [p for p in params if p.requires_grad]}]
        groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("build_optimizer: no trainable parameters (all have requires_grad=False?)")
    return groups


def build_optimizer(cfg: Any, params: nn.Module | Iterable) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov, weight decay on all params) or AdamW, from an ``OptimConfig``."""
    groups = param_groups(params, cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov and cfg.momentum > 0,
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    raise ValueError(f"optim.name={cfg.name!r}: unknown optimizer (choose 'sgd' or 'adamw')")


def milestone_iters(milestones: Iterable[float], iters_per_epoch: int) -> list[int]:
    """Epoch milestones (fractions allowed) -> iteration indices at which the decay takes effect."""
    return sorted(int(round(float(m) * iters_per_epoch)) for m in milestones)


def lr_factor(cfg: Any, it: int, iters_per_epoch: int, epochs: int) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based, the iteration about to run)."""
    if cfg.name == "step":
        main = cfg.gamma ** sum(it >= m for m in milestone_iters(cfg.milestones, iters_per_epoch))
    elif cfg.name == "cosine":
        total = max(1, getattr(cfg, "total_iters", 0) or epochs * iters_per_epoch)
        t = min(it, total) / total
        main = cfg.min_lr_factor + (1.0 - cfg.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
    elif cfg.name == "constant":
        main = 1.0
    else:
        raise ValueError(f"sched.name={cfg.name!r}: unknown schedule (choose 'step', 'cosine' or 'constant')")
    if cfg.warmup_iters > 0 and it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        main *= cfg.warmup_factor * (1.0 - alpha) + alpha
    return main


def build_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, iters_per_epoch: int, epochs: int) -> LambdaLR:
    """A per-iteration ``LambdaLR``. Its lambda is a plain closure, so ``state_dict()`` holds only numbers
    (the schedule itself is rebuilt from the config on resume)."""
    if iters_per_epoch <= 0:
        raise ValueError(f"build_scheduler: iters_per_epoch must be > 0, got {iters_per_epoch}")
    lr_factor(cfg, 0, iters_per_epoch, epochs)  # validate the name now, not at the first step

    def factor(it: int) -> float:
        return lr_factor(cfg, it, iters_per_epoch, epochs)

    return LambdaLR(optimizer, factor)
