"""Adapters: small convs that map a student tap onto a teacher tap's channels.

``make_adapter(c_in, c_out, kind)`` builds one; ``AdapterSpec`` is how a distillation term asks the
``Distiller`` for one (the Distiller sizes it from the models' declared ``channels``, never from a forward).

Kinds: ``"conv1x1"`` (TDKD, FitNets), ``"conv3x3"`` (DeFeat; padding 1), ``"conv3x3_relu"`` (FGFI: conv + ReLU),
``"identity"`` (only when ``c_in == c_out``).

``init``: ``"default"`` (PyTorch's conv init) or ``"normal_fmod2"`` (FGFI §2.2 and DeFeat §4.4 of METHODS.md:
weight = ``normal(0, 1).fmod(2) · init_std``, ``init_std = 1e-4``, i.e. a normal truncated at ±2 by fmod then
scaled; the bias keeps PyTorch's default init).

``frozen=True`` reproduces TDKD's released code (METHODS.md §1.11.1): PyTorch's default init drawn from a
private generator seeded with ``seed`` (same weights on every run and every rank, global RNG untouched), then
``requires_grad_(False)`` so the projection is never optimised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

AdapterKind = Literal["conv1x1", "conv3x3", "conv3x3_relu", "identity"]
AdapterInit = Literal["default", "normal_fmod2"]


@dataclass(frozen=True)
class AdapterSpec:
    """A request for an adapter. Terms that share ``key`` share one module (their settings must agree)."""

    key: str
    kind: AdapterKind = "conv1x1"
    bias: bool = False
    frozen: bool = False
    seed: int = 0
    init: AdapterInit = "default"
    init_std: float = 1e-4  # scale of the "normal_fmod2" weights


def make_adapter(
    c_in: int,
    c_out: int,
    kind: AdapterKind = "conv1x1",
    bias: bool = False,
    frozen: bool = False,
    seed: int | None = None,
    init: AdapterInit = "default",
    init_std: float = 1e-4,
) -> nn.Module:
    """An adapter ``[B, c_in, H, W] -> [B, c_out, H, W]`` (spatial size kept).

    With ``seed`` the default initialisation is drawn under ``torch.random.fork_rng`` seeded with it (the
    caller's RNG state is restored afterwards). ``frozen`` turns gradients off for good.
    """
    if kind == "identity":
        if c_in != c_out:
            raise ValueError(f"identity adapter needs equal channels, got {c_in} -> {c_out}")
        return nn.Identity()
    if kind not in ("conv1x1", "conv3x3", "conv3x3_relu"):
        raise ValueError(f"unknown adapter kind {kind!r} (use conv1x1, conv3x3, conv3x3_relu or identity)")
    if init not in ("default", "normal_fmod2"):
        raise ValueError(f"unknown adapter init {init!r} (use 'default' or 'normal_fmod2')")
    k = 1 if kind == "conv1x1" else 3

    def build() -> nn.Module:
        conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=bias)
        if init == "normal_fmod2":
            with torch.no_grad():
                conv.weight.normal_().fmod_(2).mul_(init_std)
        return nn.Sequential(conv, nn.ReLU(inplace=False)) if kind == "conv3x3_relu" else conv

    if seed is None:
        module = build()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = build()
    if frozen:
        module.requires_grad_(False)
    return module


def build_adapter(spec: AdapterSpec, c_in: int, c_out: int) -> nn.Module:
    """The adapter a term's ``AdapterSpec`` asks for (seeded when frozen, so faithful runs are repeatable)."""
    return make_adapter(
        c_in, c_out, spec.kind, bias=spec.bias, frozen=spec.frozen, seed=spec.seed if spec.frozen else None,
        init=spec.init, init_std=spec.init_std,
    )
