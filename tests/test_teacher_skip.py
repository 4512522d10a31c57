"""The teacher computes only what the distillation terms read: Faster R-CNN teachers skip their second stage,
dense teachers of neck-only terms skip their head, and the losses are the same as with the full forward."""
from __future__ import annotations

import pytest
import torch

from detkd.distill.distiller import build_distill_task
from detkd.distill.matrix import matrix_config, num_classes, tiny_batch, tiny_pair

# (method, detector) -> the parts the teacher skips; the ResNet families are slow on 2 cores
EXPECTED = {
    ("fgfi", "faster_rcnn_vgg"): ("rois",),
    ("defeat", "faster_rcnn_vgg"): ("rois",),
    ("kd", "faster_rcnn_vgg"): ("rois",),
    ("tdkd", "faster_rcnn_vgg"): ("rois",),
    ("feat", "faster_rcnn_vgg"): ("rois",),
    ("fgfi", "retinaface_mnet"): ("head",),
    ("feat", "retinaface_mnet"): ("head",),
    ("tdkd", "retinaface_mnet"): (),
    ("kd", "retinaface_mnet"): (),
    ("fgfi", "retinanet"): ("head",),
    ("defeat", "retinanet"): ("head",),  # head term off (the default)
    ("ld", "gfl"): (),
    ("fgfi", "faster_rcnn_fpn"): ("rois",),
}
SLOW = {"retinanet", "gfl", "faster_rcnn_fpn"}
CELLS = [pytest.param(m, d, marks=pytest.mark.slow if d in SLOW else (), id=f"{m}-{d}") for m, d in EXPECTED]


def same_losses_with_and_without_skip(task) -> None:
    images, targets, metas = tiny_batch(num_classes(task.student))
    results = []
    for skip in ((), task.teacher_skip):
        task.teacher_skip = skip
        torch.manual_seed(0)  # the RoI sampler draws at random
        with torch.no_grad():
            results.append(task((images, targets, metas)))
    full, skipped = results
    assert full.keys() == skipped.keys()
    for k in full:
        torch.testing.assert_close(skipped[k], full[k], rtol=0, atol=0, msg=k)
    assert any(k.startswith("kd.") and float(v) != 0 for k, v in full.items())


@pytest.mark.parametrize("method, detector", CELLS)
def test_skipped_parts_and_unchanged_losses(method, detector):
    student, teacher = tiny_pair(detector, method)
    task = build_distill_task(matrix_config(method, student), student, teacher).train()
    assert task.teacher_skip == EXPECTED[method, detector]
    same_losses_with_and_without_skip(task)


@pytest.mark.parametrize("head, detector, skip", [("roi", "faster_rcnn_vgg", ("rois",)),
                                                  ("dense", "retinaface_mnet", ())])
def test_defeat_head_terms(head, detector, skip):
    """DeFeat's RoI term queries the teacher's box head on the student's RoIs (the teacher's own second stage
    is not needed); its dense term reads the teacher's class logits (the head runs)."""
    student, teacher = tiny_pair(detector, "defeat")
    cfg = matrix_config("defeat", student)
    cfg.defeat.head = head
    if head == "dense":
        cfg.defeat.logits = "cls_logits"
    task = build_distill_task(cfg, student, teacher).train()
    assert task.teacher_skip == skip
    same_losses_with_and_without_skip(task)


def test_skipped_teacher_outputs():
    _, rcnn = tiny_pair("faster_rcnn_vgg")
    images, targets, _ = tiny_batch(num_classes(rcnn))
    rcnn.eval()
    with torch.no_grad():
        full, part = rcnn(images), rcnn(images, skip=("rois",))
    assert full.rois is not None and part.rois is None
    assert part.feats.keys() == full.feats.keys() and all(torch.equal(part.feats[k], full.feats[k]) for k in full.feats)
    assert all(torch.equal(a, b) for k in full.head for a, b in zip(part.head[k], full.head[k]))
    with pytest.raises(ValueError, match="without targets and without decode"):
        rcnn(images, targets, skip=("rois",))
    with pytest.raises(ValueError, match="unknown skip parts"):
        rcnn(images, skip=("head",))

    _, face = tiny_pair("retinaface_mnet")
    face.eval()
    with torch.no_grad():
        full, part = face(images), face(images, skip=("head",))
    assert part.head == {} and set(part.feats) == set(face.levels)
    assert all(torch.equal(part.feats[k], full.feats[k]) for k in face.levels)
    assert all(torch.equal(a, b) for a, b in zip(part.priors, full.priors))
    with pytest.raises(ValueError, match="without targets and without decode"):
        face(images, decode=True, skip=("head",))
    assert face.skippable(["p3", "cls_feat.p3"]) == ()
