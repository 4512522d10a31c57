"""The method × detector matrix: which distillation method runs on which detector family, and why not.

Each method declares its reach with its ``supports(student, teacher)`` hook (``distill_method(..., supports=)``).
This module builds the pairs the matrix is made of, from ONE config generator:

- ``tiny_pair(detector)``: the student is the registered tiny config (``registry.TINY_CONFIGS``, seed 0); the
  teacher is a differently seeded (seed 1), wider copy of the same family (``TEACHER_WIDER``), so every
  feature term crosses an adapter between different channel counts.
- ``matrix_section(method, student)``: the method's default config with its tap lists set to the student's neck
  taps (the declared taps without a ``.``: ``p3..p7``, ``c5``, ``p2..p6``) and warm-ups off.
- ``CELL_OPTIONS``: model options a cell turns on in BOTH models because its method needs them (LD on RetinaNet:
  the distribution branch ``dist_reg_max``); ``tiny_pair(detector, method)`` applies them, and the printed table
  marks such cells ``runs (*)`` with the options in a footnote.
- ``support_table()``: ``{(method, detector): None | reason}``, what ``detkd list methods --matrix`` prints.
"""
from __future__ import annotations

from dataclasses import fields

import torch
from torch import nn

from detkd.distill.distiller import DistillConfig, method_config, method_names, method_support
from detkd.registry import MODELS, TINY_CONFIGS, load_all

MATRIX_DETECTORS = ("retinaface_mnet", "faster_rcnn_vgg", "faster_rcnn_fpn", "retinanet", "gfl")
# teacher = tiny config updated with these (wider necks / backbones; RetinaFace's teacher has task towers)
TEACHER_WIDER: dict[str, dict] = {
    "retinaface_mnet": {"width": 0.5, "task_convs": True},
    "faster_rcnn_vgg": {"width": 0.25},
    "faster_rcnn_fpn": {"fpn_channels": 48},
    "retinanet": {"fpn_channels": 32},
    "gfl": {"fpn_channels": 32},
}
# (method, detector) -> model options both models of the cell get
CELL_OPTIONS: dict[tuple[str, str], dict] = {("ld", "retinanet"): {"dist_reg_max": 16}}
TAP_FIELDS = ("student_taps", "teacher_taps", "levels", "im_taps")  # config fields that list taps


def tiny_pair(detector: str, method: str | None = None) -> tuple[nn.Module, nn.Module]:
    """``(student, teacher)`` of one family: tiny config (seed 0) and a wider, differently seeded copy (seed 1),
    both with the ``CELL_OPTIONS`` of ``(method, detector)``."""
    load_all()
    if detector not in TINY_CONFIGS or detector not in MODELS:
        raise KeyError(f"detector {detector!r} has no tiny config (known: {', '.join(sorted(TINY_CONFIGS))})")
    base = {**TINY_CONFIGS[detector], **CELL_OPTIONS.get((method, detector), {})}
    torch.manual_seed(0)
    student = MODELS[detector](**base)
    torch.manual_seed(1)
    teacher = MODELS[detector](**{**base, **TEACHER_WIDER.get(detector, {})})
    return student, teacher


def neck_taps(model: nn.Module) -> list[str]:
    """The model's feature-map taps that are not per-task tower outputs (no ``.`` in the name), in order."""
    return [tap for tap in (getattr(model, "channels", {}) or {}) if "." not in tap]


def matrix_section(method: str, student: nn.Module):
    """The generated config section of ``method`` for ``student``: defaults, taps = the student's neck taps
    (student and teacher of one family share tap names), no warm-up (a 2-step run must distil)."""
    section = method_config(method)
    names = {f.name for f in fields(section)}
    for name in TAP_FIELDS:
        if name in names:
            setattr(section, name, neck_taps(student))
    if "warmup_iters" in names:
        section.warmup_iters = 0
    return section


def matrix_config(method: str, student: nn.Module) -> DistillConfig:
    return DistillConfig(methods=[method], **{method: matrix_section(method, student)})


def tiny_batch(num_classes: int, size: tuple[int, int] = (64, 96)) -> tuple:
    """A padded batch of 2 random images with boxes (labels ``1..num_classes``) and RetinaFace landmarks."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, *size, generator=g) * 255
    lms = torch.tensor([[[8.0, 10.0], [16, 10], [12, 14], [9, 18], [15, 18]]])
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 20.0, 22.0], [30.0, 10.0, 62.0, 44.0]]),
         "labels": torch.tensor([1, num_classes]), "landmarks": torch.cat([lms, lms + 26]),
         "landmarks_valid": torch.tensor([True, False])},
        {"boxes": torch.tensor([[40.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([1]),
         "landmarks": torch.zeros(1, 5, 2), "landmarks_valid": torch.zeros(1, dtype=torch.bool)},
    ]
    return images, targets, [{}, {}]


def num_classes(model: nn.Module) -> int:
    """Object classes (without background) of a detector: two-stage ``num_classes`` or the class head key."""
    if isinstance(getattr(model, "num_classes", None), int):
        return model.num_classes
    for spec in (getattr(model, "head_spec", None) or {}).values():
        if spec.kind in ("softmax", "sigmoid"):
            return spec.num_classes
    raise ValueError(f"{type(model).__name__} declares no class count (num_classes or a class head key)")


def support_table(methods=None, detectors=MATRIX_DETECTORS) -> dict[tuple[str, str], str | None]:
    """``{(method, detector): None (runs) | reason}`` from each method's ``supports`` on ``tiny_pair`` (with the
    cell's ``CELL_OPTIONS``)."""
    methods = list(methods or method_names())
    table = {}
    for det in detectors:
        plain = tiny_pair(det)
        for m in methods:
            student, teacher = tiny_pair(det, m) if (m, det) in CELL_OPTIONS else plain
            table[(m, det)] = method_support(m, student, teacher)
    return table


def format_table(table: dict[tuple[str, str], str | None], markdown: bool = False) -> str:
    """The matrix as text (or a markdown table): one row per method, ``runs`` / ``runs (*)`` (with the cell's
    ``CELL_OPTIONS``) / ``no (n)`` cells, then the numbered reasons and the options of the starred cells."""
    methods = list(dict.fromkeys(m for m, _ in table))
    dets = list(dict.fromkeys(d for _, d in table))
    reasons: list[str] = []
    rows = []
    for m in methods:
        cells = []
        for d in dets:
            r = table[(m, d)]
            if r is None:
                cells.append("runs (*)" if (m, d) in CELL_OPTIONS else "runs")
            else:
                if r not in reasons:
                    reasons.append(r)
                cells.append(f"no ({reasons.index(r) + 1})")
        rows.append([m, *cells])
    header = ["method", *dets]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    bullet = "- " if markdown else ""
    lines += [""] + [f"{bullet}({i}) {r}" for i, r in enumerate(reasons, 1)]
    starred = [(m, d) for (m, d), r in table.items() if r is None and (m, d) in CELL_OPTIONS]
    lines += [f"{bullet}(*) {m} on {d}: with " + ", ".join(f"{k}={v}" for k, v in CELL_OPTIONS[m, d].items())
              + " on student and teacher" for m, d in starred]
    return "\n".join(lines).rstrip() + "\n"
