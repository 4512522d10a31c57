"""The method × detector matrix: every cell either distils (2 steps, finite losses, non-zero gradients on the
student's tapped tensors, teacher untouched) or fails at build time with the reason its method declares."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detkd.distill.distiller import UnsupportedPairError, build_distill_task, method_names
from detkd.distill.matrix import (
    MATRIX_DETECTORS,
    format_table,
    matrix_config,
    num_classes,
    support_table,
    tiny_batch,
    tiny_pair,
)

METHODS = ("tdkd", "fgfi", "defeat", "ld", "kd", "feat")
# cells that are expected NOT to run, with a fragment of the declared reason
DECLARED = {
    ("tdkd", "faster_rcnn_vgg"): "two-stage detector",
    ("tdkd", "faster_rcnn_fpn"): "two-stage detector",
    ("kd", "faster_rcnn_vgg"): "two-stage detector",
    ("kd", "faster_rcnn_fpn"): "two-stage detector",
    ("ld", "retinaface_mnet"): "no distribution head key",
    ("ld", "faster_rcnn_vgg"): "no distribution head key",
    ("ld", "faster_rcnn_fpn"): "no distribution head key",
    ("ld", "retinanet"): "no distribution head key",
}
# the ResNet-18 families are the slow ones on 2 shared cores: their cells run in `make test-slow`
FAST = {"retinaface_mnet", "faster_rcnn_vgg"}
CELLS = [
    pytest.param(m, d, marks=() if d in FAST or (m, d) in DECLARED else pytest.mark.slow, id=f"{m}-{d}")
    for d in MATRIX_DETECTORS for m in METHODS
]


def test_matrix_covers_every_registered_method():
    assert set(METHODS) <= set(method_names())


@pytest.mark.parametrize("method, detector", CELLS)
def test_cell(method, detector):
    student, teacher = tiny_pair(detector)
    cfg = matrix_config(method, student)
    if (method, detector) in DECLARED:
        with pytest.raises(UnsupportedPairError, match=f"distill.{method} does not run on .*{DECLARED[method, detector]}"):
            build_distill_task(cfg, student, teacher)
        return
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    task = build_distill_task(cfg, student, teacher)
    task.train()
    images, targets, metas = tiny_batch(num_classes(student))
    # the student's tapped tensors receive gradient from the distillation terms alone
    with torch.no_grad():
        t_out = teacher(images)
    s_out = student(images, targets)
    kd = task.distiller(t_out, s_out, targets, 0, teacher_model=teacher)
    assert kd and all(torch.isfinite(v) for v in kd.values()), kd
    # every tap of a term with a non-zero value (an untrained RetinaNet/GFL teacher's probabilities lie outside
    # TDKD's (0.1, 0.9) band, so its prob term is an exact 0 there; feature taps always distil)
    taps = sorted({t.student for t in task.distiller.terms if float(kd[t.key].detach()) != 0.0})
    assert any(not tap.startswith("head.") for tap in taps) or method in ("kd", "ld"), taps
    tensors = []
    for tap in taps:
        if tap.startswith("head."):
            tensors.append(s_out.head[tap[len("head."):]])
        else:
            tensors.append([s_out.feats[tap]])
    flat = [t for group in tensors for t in group]
    grads = torch.autograd.grad(sum(kd.values()), flat, allow_unused=True)
    i = 0
    for tap, group in zip(taps, tensors):
        g = grads[i:i + len(group)]
        i += len(group)
        norm = sum(float(x.abs().sum()) for x in g if x is not None)
        assert norm > 0, f"{method} on {detector}: no gradient reaches the student tap {tap!r}"
    # two optimiser steps through the task (task + distillation losses)
    opt = torch.optim.SGD(task.parameters(), lr=1e-3)
    for step in range(2):
        losses = task((images, targets, metas))
        assert losses and all(torch.isfinite(v) for v in losses.values()), losses
        assert any(k.startswith(f"kd.{method}.") for k in losses)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    after = teacher.state_dict()
    assert all(torch.equal(teacher_before[k], after[k]) for k in teacher_before), "the teacher changed"


def test_support_table_and_format():
    table = support_table()  # every registered method x the five families
    assert {(m, d) for m in METHODS for d in MATRIX_DETECTORS} <= set(table)
    for cell, reason in table.items():
        if cell[0] in METHODS:
            assert (reason is None) == (cell not in DECLARED), (cell, reason)
    text = format_table(table)
    assert text.splitlines()[0].split() == ["method", *MATRIX_DETECTORS]
    assert "no (1)" in text and "(1) " in text
    md = format_table(table, markdown=True)
    assert md.startswith("| method | retinaface_mnet |")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("<!-- matrix:start -->\n")[1].split("<!-- matrix:end -->")[0]
    assert block == md, "README's matrix is stale: paste `detkd list methods --matrix --markdown` between the markers"
