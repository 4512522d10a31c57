"""CPU-sized GFL (ResNet-18, 64-channel FPN, 2-conv GN towers with 16 groups, trainable BN and stem) on SynthShapes
(12 shape classes, 320 input): the student size of the LD benchmarks. Everything else is GFL's (QFL / DFL reg_max 16 /
GIoU, ATSS top 9, 8 x stride priors). Needs the SynthShapes data set (``detkd data synthshapes``)."""
from detkd.config import (DetEvalConfig, ExperimentConfig, OptimConfig, ScheduleConfig, SynthShapesDataConfig,
                          TrainConfig)
from detkd.models.gfl import GFLConfig


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="gfl_r18_lite_synthshapes",
        model=GFLConfig(depth=18, num_classes=12, fpn_channels=64, stacked_convs=2, gn_groups=16, frozen_stages=0,
                        norm_eval=False),
        data=SynthShapesDataConfig(root="data/synthshapes", img_size=320),
        optim=OptimConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4),
        sched=ScheduleConfig(name="cosine", warmup_iters=100, min_lr_factor=0.01),
        train=TrainConfig(epochs=12, batch_size=8, clip_grad=10.0, log_every=20),
        eval=DetEvalConfig(evaluator="voc", protocol="torchvision-320", also=["coco"]),
    )
