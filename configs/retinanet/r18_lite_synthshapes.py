"""CPU-sized RetinaNet student on SynthShapes (12 shape classes): ResNet-18 at quarter width (``model.width=0.25``),
initialised from the shipped SynthShapes-pretrained trunk (``synthshapes_trunk_r18_w025``, ``detkd
pretrain-trunk``), 64-channel FPN, 2-conv towers with GroupNorm (16 groups; torchvision's ``_v2`` head: without it
RetinaNet reached 7 mAP in 6 epochs, with it 14), trainable BN, anchors 16-256 on P3-P7; 256 short side (long side
<= 384) on the ``cpu`` preset, 6 epochs. Plain SGD with warm-up and cosine decay. Its teacher is
``retinanet/r18_half_teacher_synthshapes``; benchmarks/results/synthshapes_capacity.md has both measured. Needs
SynthShapes (generated under ``data.root`` on first use)."""
from detkd.config import (DetEvalConfig, ExperimentConfig, OptimConfig, ScheduleConfig, SynthShapesDataConfig,
                          TrainConfig)
from detkd.models.retinanet import RetinaNetConfig
from detkd.pretrain_trunk import shipped_trunk


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="retinanet_r18_lite_synthshapes",
        model=RetinaNetConfig(depth=18, num_classes=12, fpn_channels=64, num_convs=2, width=0.25,
                              anchor_base=(16, 32, 64, 128, 256), detections_per_img=100, head_gn_groups=16),
        data=SynthShapesDataConfig(root="data/synthshapes_cpu", preset="cpu", img_size=256, max_long=384),
        optim=OptimConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4),
        sched=ScheduleConfig(name="cosine", warmup_iters=100, min_lr_factor=0.01),
        train=TrainConfig(epochs=6, batch_size=8, clip_grad=10.0, log_every=20,
                          backbone_init=shipped_trunk("r18_w025")),
        eval=DetEvalConfig(evaluator="voc", protocol="torchvision-256", also=["coco"]),
    )
