"""CPU-sized GFL student on SynthShapes (12 shape classes): ResNet-18 at quarter width (``model.width=0.25``),
initialised from the shipped SynthShapes-pretrained trunk (``detkd/assets/synthshapes_trunk_r18_w025``, made by
``detkd pretrain-trunk``: the stand-in for ImageNet), 64-channel FPN, 2-conv GN towers with 16 groups, trainable BN
and stem; 256 short side (long side <= 384), 6 epochs, about 1.1M parameters. Everything else is GFL's (QFL / DFL
reg_max 16 / GIoU, ATSS top 9, 8 x stride priors). Sized so that a run takes about a quarter of an hour on 2 CPU
cores (benchmarks/results/synthshapes_capacity.md has the measured time); its teacher is
``gfl/r18_half_teacher_synthshapes``. Needs SynthShapes (generated under ``data.root`` on first use)."""
from detkd.config import (DetEvalConfig, ExperimentConfig, OptimConfig, ScheduleConfig, SynthShapesDataConfig,
                          TrainConfig)
from detkd.models.gfl import GFLConfig
from detkd.pretrain_trunk import shipped_trunk


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="gfl_r18_lite_synthshapes",
        model=GFLConfig(depth=18, num_classes=12, fpn_channels=64, stacked_convs=2, gn_groups=16, frozen_stages=0,
                        norm_eval=False, width=0.25),
        data=SynthShapesDataConfig(root="data/synthshapes_cpu", preset="cpu", img_size=256, max_long=384),
        optim=OptimConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4),
        sched=ScheduleConfig(name="cosine", warmup_iters=100, min_lr_factor=0.01),
        train=TrainConfig(epochs=6, batch_size=8, clip_grad=10.0, log_every=20,
                          backbone_init=shipped_trunk("r18_w025")),
        eval=DetEvalConfig(evaluator="voc", protocol="torchvision-256", also=["coco"]),
    )
