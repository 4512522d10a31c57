"""The method × detector matrix: every cell either distils (2 steps, finite losses, non-zero gradients on the
student's tapped tensors, teacher untouched) or fails at build time with the reason its method declares."""
from __future__ import annotations

from dataclasses import replace
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
    ("ld", "retinaface_mnet"): "no distribution head key",
    ("ld", "faster_rcnn_vgg"): "no distribution head key",
    ("ld", "faster_rcnn_fpn"): "no distribution head key",
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
    student, teacher = tiny_pair(detector, method)
    cfg = matrix_config(method, student)
    if (method, detector) in DECLARED:
        want = f"distill.{method} does not run on .*{DECLARED[method, detector]}"
        with pytest.raises(UnsupportedPairError, match=want):
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
    # (KD on two-stage models distils the RoI classifier: its term's taps are placeholders, the tensor is
    # rois.cls_logits)
    taps = sorted({"rois.cls_logits" if t.name == "roi_cls" else t.student for t in task.distiller.terms
                   if float(kd[t.key].detach()) != 0.0})
    assert any(not tap.startswith("head.") for tap in taps) or method in ("kd", "ld"), taps
    tensors = []
    for tap in taps:
        if tap == "rois.cls_logits":
            tensors.append([s_out.rois.cls_logits])
        elif tap.startswith("head."):
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


def test_kd_on_two_stage_distils_the_roi_classifier_on_the_students_rois():
    from detkd.distill.kd import KDConfig
    from detkd.distill.losses import kd_kl

    student, teacher = tiny_pair("faster_rcnn_vgg")
    for select in ("assign", "pos"):
        cfg = matrix_config("kd", student)
        cfg.kd = KDConfig(temperature=2.0, select=select)
        cfg.sections["kd"] = cfg.kd
        task = build_distill_task(cfg, student, teacher)
        images, targets, _ = tiny_batch(num_classes(student))
        torch.manual_seed(0)
        with torch.no_grad():
            t_out = teacher(images)
            s_out = student(images, targets)
            got = task.distiller(t_out, s_out, targets, 0, teacher_model=teacher)["kd.kd.roi_cls"]
            t_roi = teacher.roi_forward(t_out.feats, s_out.rois.rois, s_out.image_sizes)
        keep = s_out.rois.labels > 0 if select == "pos" else None
        if keep is not None:
            assert 0 < int(keep.sum()) < keep.numel()
        want = kd_kl(s_out.rois.cls_logits, t_roi.cls_logits, T=2.0, mask=keep, kind="softmax")
        assert got.item() == pytest.approx(want.item(), rel=1e-5) and got.item() > 0
    _, dense_teacher = tiny_pair("retinanet")
    with pytest.raises(UnsupportedPairError, match="the student is two-stage .* and the teacher is dense"):
        build_distill_task(matrix_config("kd", student), student, dense_teacher)


def test_tdkd_ranks_negatives_by_the_students_background_loss_without_mining():
    from detkd.distill.tdkd import background_loss_rank

    z = torch.tensor([[[-5.0, -5.0], [2.0, -1.0], [0.0, 0.0], [3.0, 3.0]]])  # [1, 4, 2] sigmoid logits
    excluded = torch.tensor([[False, False, False, True]])  # prior 3 is positive: ranks last
    rank = background_loss_rank(z, "sigmoid", excluded)
    assert rank.tolist() == [[2, 0, 1, 3]]  # softplus sums: 0.013, 2.44, 1.39
    soft = background_loss_rank(torch.tensor([[[0.0, 4.0], [0.0, -4.0], [0.0, 1.0]]]), "softmax",
                                torch.zeros(1, 3, dtype=torch.bool))
    assert soft.tolist() == [[0, 2, 1]]
    # on GFL the TDKD cls mask holds the positives plus at most 3x as many negatives
    student, teacher = tiny_pair("gfl")
    build_distill_task(matrix_config("tdkd", student), student, teacher)  # builds (supports + start-up checks)
    images, targets, _ = tiny_batch(num_classes(student))
    from detkd.distill.distiller import DistillContext
    from detkd.distill.tdkd import level_masks

    with torch.no_grad():
        s_out = student(images, targets)
        ctx = DistillContext(teacher(images), s_out, targets, 0, teacher_model=teacher)
        masks = level_masks(ctx, matrix_config("tdkd", student).tdkd, "sigmoid")
    n_cls = sum(int(c.sum()) for c, _ in masks)
    n_loc = sum(int(l.sum()) for _, l in masks)
    n_pos = int(s_out.assign.pos.sum())
    assert 0 < n_loc <= n_pos and n_loc < n_cls <= 4 * n_pos


def test_ld_on_retinanet_without_the_branch_names_box_dist_and_the_option():
    student, teacher = tiny_pair("retinanet")  # the plain cell: no distribution branch
    with pytest.raises(UnsupportedPairError, match="no distribution head key 'box_dist'.*set the RetinaNet "
                       "config's dist_reg_max > 0"):
        build_distill_task(matrix_config("ld", student), student, teacher)
    with_branch, _ = tiny_pair("retinanet", "ld")  # only the teacher lacks it: the teacher is named
    with pytest.raises(UnsupportedPairError, match="the teacher \\(RetinaNet\\) has no distribution head key"):
        build_distill_task(matrix_config("ld", with_branch), with_branch, teacher)


def test_tdkd_on_faster_rcnn_reads_the_rpn():
    from detkd.distill.distiller import DistillContext
    from detkd.distill.tdkd import level_masks

    student, teacher = tiny_pair("faster_rcnn_vgg")
    cfg = matrix_config("tdkd", student)
    task = build_distill_task(cfg, student, teacher)
    terms = {t.name: (t.student, t.teacher) for t in task.distiller.terms}
    assert terms == {"cls.c5": ("c5", "rpn_feat.c5"), "loc.c5": ("c5", "rpn_feat.c5"),
                     "prob": ("head.rpn.objectness", "head.rpn.objectness")}
    images, targets, _ = tiny_batch(num_classes(student))
    with torch.no_grad():
        s_out = student(images, targets)
        ctx = DistillContext(teacher(images), s_out, targets, 0, teacher_model=teacher)
        (cls, loc), = level_masks(ctx, replace(cfg.tdkd, logits="rpn.objectness"), "sigmoid")
    # loc = locations of every matcher positive (labels > 0), not only the RPN loss's sample
    matched = (s_out.assign.labels > 0).reshape(2, *loc.shape[1:], -1).any(-1)
    assert torch.equal(loc, matched) and bool(loc.any())
    assert bool((cls & ~loc).any()) and torch.equal(cls & loc, loc)  # cls adds hard negatives to the positives
