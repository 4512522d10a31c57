"""Paper-scale configs build and run one optimisation step on a tiny input (they are meant for GPUs)."""
from pathlib import Path

import pytest
import torch

from detkd.config import list_configs, load_config
from detkd.distill.distiller import build_distill_task
from detkd.engine.optim import build_optimizer
from detkd.experiment import DetectionTask
from detkd.registry import build_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DETECTION_PAPER = [
    "retinaface/mnet025_widerface_tdkd",
    "retinaface/mnet025_widerface_biubug6",
    "retinaface/mnet075_tasks_widerface",
]


def tiny_batch(size=96):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, size, size, generator=g) * 255
    box = torch.tensor([[20.0, 20.0, 60.0, 64.0]])
    lm = torch.tensor([[[30.0, 35], [50, 35], [40, 45], [32, 55], [48, 55]]])
    targets = [
        {"boxes": box, "labels": torch.ones(1, dtype=torch.long), "landmarks": lm,
         "landmarks_valid": torch.ones(1, dtype=torch.bool)},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
         "landmarks": torch.zeros(0, 5, 2), "landmarks_valid": torch.zeros(0, dtype=torch.bool)},
    ]
    return images, targets, [{}, {}]


def one_step(cfg, task):
    opt = build_optimizer(cfg.optim, task)
    losses = task(tiny_batch())
    loss = sum(losses.values())
    assert torch.isfinite(loss), losses
    opt.zero_grad()
    loss.backward()
    opt.step()
    return losses


@pytest.mark.parametrize("name", DETECTION_PAPER)
def test_detection_paper_config_one_step(name):
    cfg = load_config(name)
    assert cfg.data.img_size == 640 and cfg.train.batch_size == 32
    losses = one_step(cfg, DetectionTask(build_model(cfg.model)))
    assert set(losses) == {"task.loc", "task.cls", "task.landm"}


def test_tdkd_paper_config_recipe_and_one_step():
    cfg = load_config("tdkd/retinaface_mnet075_to_mnet025_widerface")
    # METHODS.md §1.8
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (2e-2, 0.9, 5e-4)
    assert cfg.sched.milestones == [55, 68] and cfg.train.epochs == 80 and cfg.sched.warmup_iters == 0
    assert cfg.distill.tdkd.prob_weight == 50.0 and cfg.distill.tdkd.neg_ratio == 3
    assert cfg.distill.teacher.width == 0.75 and cfg.distill.teacher.task_convs
    task = build_distill_task(cfg.distill, build_model(cfg.model), build_model(cfg.distill.teacher))
    losses = one_step(cfg, task)
    assert any(k.startswith("kd.tdkd.") for k in losses)


def test_tdkd_paper_student_init_loads_base_pth():
    base = SHARED / "weights" / "retinaface_mnet025_relu_tdkd_base.pth"
    if not base.is_file():
        pytest.skip(f"real checkpoint not available: {base}")
    from detkd.engine.checkpoint import load_student_weights

    cfg = load_config("tdkd/retinaface_mnet075_to_mnet025_widerface", [f"train.init_weights={base}"])
    student = build_model(cfg.model)
    sd = load_student_weights(cfg.train.init_weights)
    student.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()}, strict=True)
    assert len(student.state_dict()) == 300


def test_every_config_loads():
    names = list_configs()
    assert "tdkd/retinaface_mnet075_to_mnet025_synthfaces" in names
    for name in names:
        cfg = load_config(name)
        assert cfg.name and cfg.model is not None, name


def test_imagenet_backbone_init_needs_explicit_trust():
    tar = SHARED / "weights" / "mobilenetv1_x025_imagenet.tar"
    if not tar.is_file():
        pytest.skip(f"real checkpoint not available: {tar}")
    from detkd.experiment import build_task

    cfg = load_config("retinaface/mnet025_widerface_tdkd", [f"train.backbone_init={tar}"])
    with pytest.raises(PermissionError, match="trust_pickle"):
        build_task(cfg)
    cfg.train.trust_pickle = True
    task = build_task(cfg)
    assert task.student.body.stage1[0][0].weight.abs().sum() > 0
