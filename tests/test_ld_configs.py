"""LD paper configs (configs/ld/: R101 -> R18 COCO and VOC, Self-LD R18 -> R18, the TA chain R101 -> R50 -> R18)
and the SynthShapes LD / Self-LD configs: their settings, and 2 distillation steps on real voc_mini images.

Teachers are random here (real runs load ``distill.teacher_weights``); the steps check that each config builds a
student, a teacher and the LD terms that fit together and train (finite losses, the student's head and trunk move,
the teacher does not).
"""
import dataclasses
from pathlib import Path

import pytest
import torch
from torchvision.models.resnet import BasicBlock, Bottleneck

from detkd.config import load_config
from detkd.data.detection import ResizeConfig
from detkd.data.loader import collate_detection
from detkd.data.voc import VOCDetection
from detkd.distill.distiller import build_distill_task
from detkd.engine.optim import build_optimizer
from detkd.registry import build_model

VOC = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc_mini"
PAPER = {  # config: (student depth, teacher depth, classes)
    "ld/ld_r101_r18_coco": (18, 101, 80),
    "ld/ld_r101_r18_voc": (18, 101, 20),
    "ld/self_ld_r18_r18_voc": (18, 18, 20),
    "ld/ta_r101_r50_voc": (50, 101, 20),
    "ld/ta_r50_r18_voc": (18, 50, 20),
}
LITE = {"ld/ld_lite_synthshapes": (18, 0.5), "ld/self_ld_lite_synthshapes": (18, 0.25)}  # teacher depth, width
RETINA_LITE = "ld/retinanet_lite_synthshapes"  # LD on RetinaNet through its distribution branch


def test_paper_ld_settings():
    for name, (s_depth, t_depth, k) in PAPER.items():
        cfg = load_config(name)
        d = cfg.distill
        assert (cfg.model.depth, d.teacher.depth, cfg.model.num_classes, d.teacher.num_classes) == \
            (s_depth, t_depth, k, k), name
        assert d.methods == ["ld"] and d.teacher.reg_max == cfg.model.reg_max == 16
        ld = d.ld
        # §3.6, and the KD + VLR terms the VOC "Main LD" / COCO R18 configs switch on through defaults (§3.11-2)
        assert (ld.ld_T, ld.ld_weight, ld.kd_T, ld.kd_weight) == (10.0, 0.25, 2.0, 10.0), name
        assert (ld.vlr_T, ld.vlr_weight, ld.vlr_alpha, ld.topk, ld.faithful, ld.im_weight) == \
            (10.0, 0.25, 0.25, 9, True, 0.0), name
        if k == 20:
            assert (cfg.train.batch_size, cfg.optim.lr, cfg.train.epochs, cfg.sched.milestones) == (6, 0.00375, 12, [9])
        else:
            assert (cfg.train.epochs, cfg.sched.milestones, cfg.optim.lr) == (12, [8, 11], 0.01)
    # the TA chain links up: stage 1's student is stage 2's teacher architecture
    assert load_config("ld/ta_r101_r50_voc").model == load_config("ld/ta_r50_r18_voc").distill.teacher
    for name, (t_depth, t_width) in LITE.items():
        cfg = load_config(name)
        assert cfg.model == load_config("gfl/r18_lite_synthshapes").model
        assert (cfg.distill.teacher.depth, cfg.distill.teacher.width) == (t_depth, t_width)
        assert cfg.distill.teacher.fpn_channels == cfg.model.fpn_channels and cfg.data.name == "synthshapes"
    cfg = load_config(RETINA_LITE)
    assert cfg.model.name == cfg.distill.teacher.name == "retinanet"
    shipped = load_config("retinanet/r18_half_teacher_synthshapes").model  # the shipped teacher's architecture
    assert dataclasses.replace(cfg.distill.teacher, dist_reg_max=0) == shipped
    assert cfg.model.dist_reg_max == cfg.distill.teacher.dist_reg_max == 16 and cfg.distill.methods == ["ld"]


def voc_batch(n: int, short: int):
    if not VOC.is_dir():
        pytest.skip(f"voc_mini not available: {VOC}")
    data = VOCDetection(VOC, "val", resize=ResizeConfig((short,), 1000))
    images, targets, metas = collate_detection([data[i] for i in range(n)])
    return images, targets, metas


def _stable_init(model):
    """Random deep residual stacks with BN in eval mode blow up; zero each block's last BN scale (real runs start
    from ImageNet / trained weights)."""
    for block in model.backbone.body.modules():
        if isinstance(block, (Bottleneck, BasicBlock)):
            torch.nn.init.zeros_((block.bn3 if isinstance(block, Bottleneck) else block.bn2).weight)
    return model


def two_distill_steps(name: str, short: int):
    torch.manual_seed(0)
    cfg = load_config(name)
    images, targets, metas = voc_batch(2, short)
    if cfg.model.num_classes == 80:  # COCO configs: VOC labels stand in for COCO ids
        targets = [{**t, "labels": t["labels"] * 4} for t in targets]
    student = _stable_init(build_model(cfg.model))
    teacher = _stable_init(build_model(cfg.distill.teacher)).eval()
    task = build_distill_task(cfg.distill, student, teacher)
    task.train()
    opt = build_optimizer(cfg.optim, task)
    before = {k: v.detach().clone() for k, v in task.named_parameters()}
    keys = set()
    for _ in range(2):
        losses = task((images, targets, metas))
        keys |= set(losses)
        loss = sum(losses.values())
        assert torch.isfinite(loss), losses
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert {"kd.ld.ld", "kd.ld.kd", "kd.ld.vlr"} <= keys
    changed = {k for k, v in task.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("student.head.") for k in changed)
    assert any(k.startswith("student.backbone.body.layer4") for k in changed)
    assert not any(k.startswith("teacher.") for k in changed)


def test_self_ld_paper_config_two_steps_on_voc_mini():
    two_distill_steps("ld/self_ld_r18_r18_voc", 128)  # the fast representative (R18 teacher and student)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_ld_config_two_steps_on_voc_mini(name):
    two_distill_steps(name, 160)


@pytest.mark.parametrize("name", [*sorted(LITE), RETINA_LITE])
def test_lite_synthshapes_ld_configs_build_and_step(name):
    cfg = load_config(name)
    torch.manual_seed(0)
    task = build_distill_task(cfg.distill, build_model(cfg.model), build_model(cfg.distill.teacher).eval())
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([12])}] * 2
    losses = task((torch.rand(2, 3, 96, 128) * 255, targets, [{}, {}]))
    assert {"kd.ld.ld", "kd.ld.kd", "kd.ld.vlr"} <= set(losses) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
