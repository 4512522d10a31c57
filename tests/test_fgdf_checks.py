"""FGFI / DeFeat on the registered detectors: start-up checks, GT-less images, DeFeat's faithful SampleTEA."""
from __future__ import annotations

import pytest
import torch
from _method_e2e import distill_config
from torch import nn

from detkd.distill.defeat import DeFeatConfig
from detkd.distill.distiller import DistillContext, build_distill_task
from detkd.distill.fgfi import FGFIConfig
from detkd.distill.losses import decoupled_roi_kd
from detkd.registry import MODELS, load_all

load_all()
VGG_TINY = dict(depth=11, width=0.125, hidden=64, num_classes=3, anchor_sizes=[32, 64, 128])
FPN = ["p2", "p3", "p4", "p5", "p6"]
RETINA = ["p3", "p4", "p5", "p6", "p7"]
EMPTY = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}


def targets2():
    return [{"boxes": torch.tensor([[10.0, 15, 70, 90], [80, 20, 150, 110]]), "labels": torch.tensor([1, 2])},
            {"boxes": torch.tensor([[30.0, 30, 100, 80]]), "labels": torch.tensor([3])}]


def images2(h=128, w=160):
    return torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0)) * 255


class ShiftedAnchors(nn.Module):
    """A detector whose reported anchors sit ``shift`` px off its own cell grid (same maps, same taps)."""

    def __init__(self, model: nn.Module, shift: float = 8.0):
        super().__init__()
        self.model, self.shift = model, shift
        self.channels, self.strides = model.channels, model.strides

    def forward(self, images, targets=None, decode=False, image_sizes=None):
        out = self.model(images, targets, decode=decode, image_sizes=image_sizes)
        out.priors = [p + self.shift for p in out.priors]
        return out


def test_missing_level_fails_at_build_naming_the_tap():
    torch.manual_seed(0)
    student = MODELS["faster_rcnn_fpn"](depth=18, norm="bn", fpn_channels=32, hidden=64, num_classes=3)
    teacher = MODELS["retinanet"](depth=18, num_classes=3, fpn_channels=32, num_convs=1)
    for method, section in (("defeat", DeFeatConfig(student_taps=FPN, teacher_taps=FPN)),
                            ("fgfi", FGFIConfig(student_taps=FPN, teacher_taps=FPN))):
        with pytest.raises(KeyError, match=r"teacher \(RetinaNet\) has no tap 'p2'"):
            build_distill_task(distill_config(method, section), student, teacher)
    with pytest.raises(ValueError, match="stride 4 but teacher tap 'p3' has stride 8"):
        build_distill_task(distill_config("defeat", DeFeatConfig(student_taps=FPN, teacher_taps=RETINA)),
                           student, teacher)


def test_fgfi_teacher_anchors_off_the_student_grid_fail_at_start():
    torch.manual_seed(0)
    student, teacher = MODELS["faster_rcnn_vgg"](**VGG_TINY), MODELS["faster_rcnn_vgg"](**VGG_TINY)
    cfg = distill_config("fgfi", FGFIConfig(warmup_iters=0, student_taps=["c5"], teacher_taps=["c5"]))
    batch = (images2(), targets2(), [{}, {}])
    ok = build_distill_task(cfg, student, teacher)
    report = ok.check_setup(batch)  # same grid (anchor sizes may differ: only the cells matter)
    assert "kd.fgfi.imit.c5" in report["taps"]
    bad = build_distill_task(cfg, student, ShiftedAnchors(teacher))
    with pytest.raises(ValueError, match=r"student tap 'c5' and teacher tap 'c5' have different anchor grids"):
        bad.check_setup(batch)


def test_gt_less_images_give_zero_fg_terms_and_finite_loss():
    torch.manual_seed(0)
    vs, vt = MODELS["faster_rcnn_vgg"](**VGG_TINY), MODELS["faster_rcnn_vgg"](**VGG_TINY)
    fgfi = build_distill_task(distill_config("fgfi", FGFIConfig(warmup_iters=0, student_taps=["c5"],
                                                                teacher_taps=["c5"])), vs, vt)
    kw = dict(depth=18, num_classes=3, fpn_channels=16, num_convs=1)
    rs, rt = MODELS["retinanet"](**kw), MODELS["retinanet"](**kw)
    defeat = build_distill_task(distill_config("defeat", DeFeatConfig(student_taps=RETINA, teacher_taps=RETINA,
                                                                      head="dense")), rs, rt)
    empty = (images2(), [dict(EMPTY), dict(EMPTY)], [{}, {}])
    lf, ld = fgfi(empty), defeat(empty)
    assert lf["kd.fgfi.imit.c5"].item() == 0.0
    assert all(ld[f"kd.defeat.fg.{t}"].item() == 0.0 for t in RETINA) and ld["kd.defeat.bg.p3"] > 0
    for losses in (lf, ld):
        assert all(torch.isfinite(v) for v in losses.values()), losses
        sum(losses.values()).backward()
    # one image with GT, one without: the GT-less image has no mask cell
    mixed = [targets2()[0], dict(EMPTY)]
    with torch.no_grad():
        out = vs(images2(), mixed)
    mask = fgfi.distiller.terms[0].mask(DistillContext(teacher=None, student=out, targets=mixed, step=1))
    assert mask[0].any() and not mask[1].any()
    assert all(torch.isfinite(v) for v in fgfi((images2(), mixed, [{}, {}])).values())


def test_defeat_faithful_sample_tea_on_tiny_faster_rcnn():
    torch.manual_seed(0)
    student, teacher = MODELS["faster_rcnn_vgg"](**VGG_TINY), MODELS["faster_rcnn_vgg"](**VGG_TINY)
    sec = dict(head="roi", student_taps=["c5"], teacher_taps=["c5"])
    tea = build_distill_task(distill_config("defeat", DeFeatConfig(faithful=True, **sec)), student, teacher)
    stu = build_distill_task(distill_config("defeat", DeFeatConfig(**sec)), student, teacher)
    tea.eval(), stu.eval()  # no dropout: the recomputation below sees the same numbers
    images, targets = images2(), targets2()
    torch.manual_seed(1)
    losses = tea((images, targets, [{}, {}]))
    torch.manual_seed(1)  # the same order of random draws: teacher forward, student sampling, teacher sampling
    with torch.no_grad():
        t = teacher(images)
        s = student(images, targets)
        t_rois = teacher.sample_rois(t, targets)
        s_on_t = student.roi_forward(s.feats, t_rois.rois, s.image_sizes)
    n_t = [r.shape[0] for r in t_rois.rois]
    n_s = [r.shape[0] for r in s.rois.rois]
    keep = [min(a, b) for a, b in zip(n_t, n_s)]
    rows = lambda x, n: torch.cat([p[:k] for p, k in zip(x.split(n), keep)])  # noqa: E731
    s_labels, t_labels = rows(s.rois.labels, n_s), rows(t_rois.labels, n_t)
    assert (s_labels != t_labels).any()  # the reference's mismatch: the groups are not the RoIs' own labels
    pos, neg = decoupled_roi_kd(rows(s_on_t.cls_logits, n_t), rows(t_rois.cls_logits, n_t), s_labels)
    assert losses["kd.defeat.head.pos"].item() == pytest.approx(2 * pos.item(), rel=1e-5)
    assert losses["kd.defeat.head.neg"].item() == pytest.approx(2 * neg.item(), rel=1e-5)
    # the teacher's own sampled RoIs include its GT boxes (added as proposals), scored by both heads
    assert any((r[:, None, :] == tg["boxes"][None]).all(-1).any() for r, tg in zip(t_rois.rois, targets))
    (losses["kd.defeat.head.pos"] + losses["kd.defeat.head.neg"]).backward()
    assert student.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    # SampleSTU (the default) scores the student's RoIs: a different pairing and loss
    torch.manual_seed(1)
    clean = stu((images, targets, [{}, {}]))
    assert clean["kd.defeat.head.pos"].item() != pytest.approx(losses["kd.defeat.head.pos"].item(), rel=1e-4)
    with pytest.raises(ValueError, match="faithful=true applies to head='roi' only"):
        build_distill_task(distill_config("defeat", DeFeatConfig(faithful=True, student_taps=["c5"],
                                                                 teacher_taps=["c5"])), student, teacher)
