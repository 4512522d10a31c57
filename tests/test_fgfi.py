"""FGFI (METHODS.md §2): the imitation mask with the reference's anchors, the loss normalisation (§2.7)."""
from __future__ import annotations

import pytest
import torch

from detkd.distill.losses import masked_feat_l2
from detkd.distill.masks import fgfi_level_mask, fgfi_location_masks

# generate_anchors(base 16, ratios [0.5, 1, 2], scales [8, 16, 32]) as the Python code computes them (§2.3)
BASE_ANCHORS = torch.tensor([
    [-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
    [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
    [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359],
], dtype=torch.float32)


def vgg_anchors(h: int = 38, w: int = 50, stride: int = 16) -> torch.Tensor:
    """All H·W·9 anchors, row-major (y, x) then anchor; shifts (16x, 16y) from 0 as in the reference."""
    ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
    shifts = torch.stack([xs, ys, xs, ys], -1).float()  # [H, W, 4]
    return (shifts[:, :, None, :] + BASE_ANCHORS[None, None]).reshape(-1, 4)


def cells(mask):
    idx = mask.nonzero()
    return len(idx), (idx[:, 0].min().item(), idx[:, 0].max().item()), (idx[:, 1].min().item(), idx[:, 1].max().item())


def test_gt_equal_to_an_anchor():
    gt = torch.tensor([[104.0, 136, 231, 263]])  # the ratio-1 / scale-8 anchor at (y=12, x=10)
    anchors = vgg_anchors()
    assert torch.equal(anchors[(12 * 50 + 10) * 9 + 3], gt[0])
    mask = fgfi_level_mask(anchors, gt, (38, 50))
    assert mask.shape == (38, 50) and mask[12, 10]
    assert cells(mask) == (17, (10, 14), (8, 12))


def test_second_gt_and_union():
    anchors = vgg_anchors()
    gt = torch.tensor([[100.0, 100, 300, 250]])
    from detkd.ops.boxes import box_iou_plus1

    assert box_iou_plus1(anchors, gt).max().item() == pytest.approx(0.5820, abs=1e-4)
    mask = fgfi_level_mask(anchors, gt, (38, 50))
    assert cells(mask) == (165, (3, 18), (4, 20))
    first = fgfi_level_mask(anchors, torch.tensor([[104.0, 136, 231, 263]]), (38, 50))
    both = fgfi_level_mask(anchors, torch.tensor([[104.0, 136, 231, 263], [100, 100, 300, 250]]), (38, 50))
    assert int(both.sum()) == 165 and torch.equal(both, mask | first)  # per-GT thresholds, then the union


def test_strict_threshold_all_anchors_and_degenerate_gts():
    anchors = vgg_anchors()
    # zero-width GT: normal "+1" IoUs (max 0.00652) and 91 cells (§2.6)
    from detkd.ops.boxes import box_iou_plus1

    thin = torch.tensor([[100.0, 100, 100, 200]])
    assert box_iou_plus1(anchors, thin).max().item() == pytest.approx(0.00652, abs=1e-5)
    assert int(fgfi_level_mask(anchors, thin, (38, 50)).sum()) == 91
    # a point GT adds nothing; no GT gives an empty mask
    assert not fgfi_level_mask(anchors, torch.tensor([[50.0, 50, 50, 50]]), (38, 50)).any()
    assert not fgfi_level_mask(anchors, torch.zeros(0, 4), (38, 50)).any()
    # ψ = 1 with strict '>' marks nothing (no anchor beats its own max)
    assert not fgfi_level_mask(anchors, torch.tensor([[104.0, 136, 231, 263]]), (38, 50), psi=1.0).any()
    # a GT at the border reaches anchors that cross the border (no inside filtering)
    corner = fgfi_level_mask(anchors, torch.tensor([[0.0, 0, 30, 30]]), (38, 50))
    assert corner[0, 0]


def test_per_level_masks_batch_and_shape_errors():
    anchors = vgg_anchors(10, 12)
    gts = [torch.tensor([[20.0, 20, 80, 90]]), torch.zeros(0, 4)]
    masks = fgfi_location_masks([anchors, vgg_anchors(5, 6, 32)], gts, [(10, 12), (5, 6)])
    assert [tuple(m.shape) for m in masks] == [(2, 10, 12), (2, 5, 6)]
    assert masks[0][0].any() and masks[1][0].any() and not masks[0][1].any()
    with pytest.raises(ValueError, match="cannot be split"):
        fgfi_level_mask(anchors, gts[0], (10, 13))


def test_loss_normalisation_and_identity():
    s = torch.zeros(1, 512, 4, 4)
    t = s + 0.1
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 1, 1] = mask[0, 2, 3] = True
    assert masked_feat_l2(s, t, mask, denom="fgfi").item() == pytest.approx(2 * 512 * 0.01 / 4, rel=1e-5)  # 2.56
    assert masked_feat_l2(t, t, mask, denom="fgfi").item() == 0.0
    assert masked_feat_l2(s, t, torch.zeros_like(mask), denom="fgfi").item() == 0.0  # guarded, not NaN


# ------------------------------------------------------------------------ the method on RetinaFace


def test_fgfi_terms_adapters_and_warmup():
    from _method_e2e import distill_config, shipped_pair

    from detkd.distill.distiller import build_distill_task
    from detkd.distill.fgfi import FGFIConfig

    student, teacher = shipped_pair()
    cfg = distill_config("fgfi", FGFIConfig())
    task = build_distill_task(cfg, student, teacher)
    assert [t.key for t in task.distiller.terms] == ["kd.fgfi.imit.p3", "kd.fgfi.imit.p4", "kd.fgfi.imit.p5"]
    for t in task.distiller.terms:
        assert t.weight == 0.01 and t.schedule.factor(399) == 0.0 and t.schedule.factor(400) == 1.0
    for a in task.distiller.adapters.values():
        conv, act = a[0], a[1]
        assert isinstance(act, torch.nn.ReLU) and conv.kernel_size == (3, 3) and conv.bias is not None
        assert conv.weight.abs().max() < 2e-4 and conv.weight.std() > 5e-5  # normal·fmod(2)·1e-4
        assert conv.bias.abs().max() > 1e-3  # PyTorch default bias init kept
    with pytest.raises(KeyError, match="no tap 'p6'"):
        cfg = distill_config("fgfi", FGFIConfig(student_taps=["p3", "p6"], teacher_taps=["p3", "p6"]))
        build_distill_task(cfg, student, teacher)
    with pytest.raises(ValueError, match="stride 8 but teacher tap 'p4' has stride 16"):
        cfg = distill_config("fgfi", FGFIConfig(student_taps=["p3"], teacher_taps=["p4"]))
        build_distill_task(cfg, student, teacher)


def test_fgfi_runs_on_retinaface_synthfaces(tmp_path):
    from _method_e2e import run_steps

    from detkd.distill.fgfi import FGFIConfig

    task, history, grads = run_steps("fgfi", FGFIConfig(warmup_iters=0), tmp_path / "sf")
    for losses in history:
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
        assert sum(v for k, v in losses.items() if k.startswith("kd.fgfi.")) > 0
    for g in grads:
        assert sum(g.values()) > 0
    masks = task.distiller.terms[0].mask  # the mask is the student's anchors against the GT
    assert masks is not None


def test_fgfi_mask_on_retinaface_priors_and_gt_less_image():
    from _method_e2e import distill_config, shipped_pair

    from detkd.distill.distiller import DistillContext, build_distill_task
    from detkd.distill.fgfi import FGFIConfig

    student, teacher = shipped_pair()
    cfg = distill_config("fgfi", FGFIConfig(warmup_iters=0))
    task = build_distill_task(cfg, student, teacher)
    images = torch.rand(2, 3, 96, 96) * 255
    targets = [{"boxes": torch.tensor([[20.0, 20, 52, 52]]), "labels": torch.ones(1, dtype=torch.long),
                "landmarks": torch.zeros(1, 5, 2), "landmarks_valid": torch.tensor([False])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                "landmarks": torch.zeros(0, 5, 2), "landmarks_valid": torch.zeros(0, dtype=torch.bool)}]
    losses = task((images, targets, [{}, {}]))
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        s_out = task.student(images, targets)
    ctx = DistillContext(teacher=None, student=s_out, targets=targets, step=0)
    m = [t.mask(ctx) for t in task.distiller.terms]
    assert m[0][0].any() and not any(x[1].any() for x in m)  # GT-less image: empty mask on every level
    # the 32 px face matches the 32 px anchor at stride 8 near its centre (36, 36) -> cell (4, 4)
    assert m[0][0, 4, 4]


def test_fgfi_on_faster_rcnn_vgg_anchors_when_registered():
    from _method_e2e import distill_config

    from detkd.distill.distiller import DistillContext, build_distill_task
    from detkd.distill.fgfi import FGFIConfig
    from detkd.registry import MODELS, load_all

    load_all()
    torch.manual_seed(0)
    student = MODELS["faster_rcnn_vgg"](depth=11, width=0.25, hidden=64)  # the paper's anchors, a light trunk
    teacher = MODELS["faster_rcnn_vgg"](depth=13, width=0.25, hidden=64)
    cfg = distill_config("fgfi", FGFIConfig(warmup_iters=0, student_taps=["c5"], teacher_taps=["c5"]))
    task = build_distill_task(cfg, student, teacher)
    images = torch.rand(1, 3, 608, 800) * 255  # conv5: 38 x 50
    targets = [{"boxes": torch.tensor([[104.0, 136, 231, 263], [100, 100, 300, 250]]), "labels": torch.tensor([1, 2])}]
    losses = task((images, targets, [{}]))
    assert torch.isfinite(losses["kd.fgfi.imit.c5"]) and losses["kd.fgfi.imit.c5"] > 0
    sum(losses.values()).backward()
    assert next(iter(task.distiller.adapters.values()))[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        out = student(images, targets)
    assert torch.equal(out.priors[0], vgg_anchors(38, 50))  # the model's anchors are the reference's
    mask = task.distiller.terms[0].mask(DistillContext(teacher=None, student=out, targets=targets, step=0))
    assert mask.shape == (1, 38, 50) and int(mask.sum()) == 165
    one = [{"boxes": targets[0]["boxes"][:1], "labels": targets[0]["labels"][:1]}]
    mask = task.distiller.terms[0].mask(DistillContext(teacher=None, student=out, targets=one, step=0))
    assert cells(mask[0]) == (17, (10, 14), (8, 12))
