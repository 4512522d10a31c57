"""FGFI / DeFeat paper and SynthShapes distillation configs: recipes, 2 steps on voc_mini, a few SynthShapes steps.

The fast tests pin the papers' numbers, take 2 steps of the FGFI VGG16 → VGG11 config at reduced width on real
voc_mini images and 2 steps of every SynthShapes config on a 4-image SynthShapes set (about 5 s each). The slow
test takes 2 steps of every paper distillation config at full model size (224-px voc_mini input).
"""
from __future__ import annotations

import pytest
import torch
from test_faster_rcnn_configs import _voc_batch

from detkd.config import load_config
from detkd.distill.distiller import build_distill_task
from detkd.engine.optim import build_optimizer
from detkd.registry import build_model

PAPER_KD = ("fgfi/vgg16_to_vgg11_voc07", "defeat/r101_to_r50_fpn_voc0712",
            "fgfi/r101_to_r50_fpn_voc0712_defeat_port", "defeat/retinanet_r101_to_r50_voc0712")
SYNTH_KD = ("fgfi/faster_rcnn_vgg_lite_synthshapes", "fgfi/faster_rcnn_fpn_lite_synthshapes",
            "defeat/faster_rcnn_fpn_lite_synthshapes", "defeat/retinanet_lite_synthshapes")


def test_paper_distillation_recipes():
    fg = load_config("fgfi/vgg16_to_vgg11_voc07")
    f = fg.distill.fgfi
    assert (fg.model.depth, fg.model.vgg_frozen, fg.distill.teacher.depth, fg.distill.teacher.vgg_frozen) == (11, 7, 16, 10)
    assert (f.weight, f.psi, f.warmup_iters, f.plus1, f.variant, f.student_taps, f.teacher_taps) == (
        0.01, 0.5, 400, True, "fgfi", ["c5"], ["c5"])
    assert (fg.train.batch_size, fg.optim.lr, fg.sched.milestones, fg.train.epochs, fg.train.clip_grad) == (
        16, 3e-3, [8], 15, 10.0)
    df = load_config("defeat/r101_to_r50_fpn_voc0712")
    d = df.distill.defeat
    assert (df.model.depth, df.distill.teacher.depth, df.optim.lr, df.train.clip_grad, df.train.batch_size) == (
        50, 101, 0.01, 35.0, 16)
    assert (d.fg_weight, d.bg_weight, d.head, d.faithful) == (3.0, 12.0, "off", False)
    assert d.student_taps == d.teacher_taps == ["p2", "p3", "p4", "p5", "p6"]
    port = load_config("fgfi/r101_to_r50_fpn_voc0712_defeat_port")
    p = port.distill.fgfi
    assert (p.variant, p.weight, p.warmup_iters, p.plus1, port.optim.lr, port.train.batch_size) == (
        "defeat_port", 3.0, 0, False, 0.02, 8)
    rn = load_config("defeat/retinanet_r101_to_r50_voc0712")
    assert (rn.model.depth, rn.distill.teacher.depth) == (50, 101)
    assert rn.distill.defeat.student_taps == ["p3", "p4", "p5", "p6", "p7"]


def distill_steps(cfg, images, targets, sizes, steps=2, zero_init=False):
    torch.manual_seed(0)
    student, teacher = build_model(cfg.model), build_model(cfg.distill.teacher)
    if zero_init:  # frozen BN with random statistics over 33 residual blocks overflows: see test_faster_rcnn_configs
        for m in (student, teacher):
            for name, buf in m.backbone.body.named_buffers():
                if name.endswith("bn3.weight"):
                    buf.zero_()
    task = build_distill_task(cfg.distill, student, teacher)
    task.train()
    opt = build_optimizer(cfg.optim, task)
    history = []
    for _ in range(steps):
        losses = task((images, targets, [{} for _ in targets]))
        loss = sum(losses.values())
        assert torch.isfinite(loss), losses
        opt.zero_grad()
        loss.backward()
        if cfg.train.clip_grad:
            torch.nn.utils.clip_grad_norm_([p for p in task.parameters() if p.requires_grad], cfg.train.clip_grad)
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return task, history


def test_fgfi_vgg_paper_config_two_steps_reduced_width():
    cfg = load_config("fgfi/vgg16_to_vgg11_voc07")
    for m in (cfg.model, cfg.distill.teacher):
        m.width, m.hidden = 0.125, 64
    images, targets, sizes = _voc_batch(2, 224)
    task, history = distill_steps(cfg, images, targets, sizes)
    frozen = [n for n, p in task.student.named_parameters() if not p.requires_grad]
    assert frozen == [f"backbone.{i}.{k}" for i in (0, 3, 6) for k in ("weight", "bias")]  # conv1, conv2, conv3_1
    assert all(h["kd.fgfi.imit.c5"] == 0.0 for h in history)  # the 400-iteration zero warm-up
    task.set_step(400)
    losses = task((images, targets, [{}, {}]))
    assert losses["kd.fgfi.imit.c5"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_KD)
def test_paper_distillation_config_two_steps_on_voc_mini(name):
    cfg = load_config(name)
    images, targets, sizes = _voc_batch(2, 224)
    if name.startswith("fgfi/vgg"):
        cfg.distill.fgfi.warmup_iters = 0
    task, history = distill_steps(cfg, images, targets, sizes, zero_init=not name.startswith("fgfi/vgg"))
    kd = {k: v for k, v in history[-1].items() if k.startswith("kd.")}
    assert kd and any(v > 0 for v in kd.values()), kd


@pytest.mark.parametrize("name", SYNTH_KD)
def test_synthshapes_distillation_config_trains(name, tmp_path):
    from detkd.data.loader import collate_detection
    from detkd.data.synthshapes import synthshapes

    cfg = load_config(name)
    if "fgfi" in cfg.distill.methods:
        cfg.distill.fgfi.warmup_iters = 0
    ds = synthshapes(root=str(tmp_path / "ss"), split="train", img_size=160, max_long=224, n_train=4, n_val=2)
    batches = [collate_detection([ds[2 * i], ds[2 * i + 1]]) for i in range(2)]
    torch.manual_seed(0)
    task = build_distill_task(cfg.distill, build_model(cfg.model), build_model(cfg.distill.teacher))
    task.train()
    opt = build_optimizer(cfg.optim, task)
    for batch in batches:
        losses = task(batch)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert any(v > 0 for k, v in losses.items() if k.startswith("kd."))
    assert all(a.weight.grad is not None if not isinstance(a, torch.nn.Sequential) else a[0].weight.grad is not None
               for a in task.distiller.adapters.values())
