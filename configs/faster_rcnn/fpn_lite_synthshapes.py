"""CPU-sized Faster R-CNN student on SynthShapes (12 classes): ResNet-18 at quarter width (``model.width=0.25``),
initialised from the shipped SynthShapes-pretrained trunk (``synthshapes_trunk_r18_w025``, ``detkd
pretrain-trunk``), 64-channel FPN, 256-unit two-fc box head, trainable BN, anchors 16-256; 256 short side (long side
<= 384) on the ``cpu`` preset, 6 epochs of SGD with warm-up and cosine decay, VOC07 mAP with the ``torchvision-256``
test. Its teacher is ``faster_rcnn/fpn_r18_half_teacher_synthshapes``. Needs SynthShapes (generated on first use)."""
from detkd.config import (DetEvalConfig, ExperimentConfig, OptimConfig, ScheduleConfig, SynthShapesDataConfig,
                          TrainConfig)
from detkd.models.faster_rcnn import FasterRCNNConfig
from detkd.pretrain_trunk import shipped_trunk


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="faster_rcnn_fpn_lite_synthshapes",
        model=FasterRCNNConfig.fpn(name="faster_rcnn_fpn_lite", depth=18, width=0.25, norm="bn", trainable_layers=5,
                                   fpn_channels=64, hidden=256, anchor_sizes=[16, 32, 64, 128, 256],
                                   rpn_pre_nms=(1000, 500), rpn_post_nms=(512, 300), roi_batch=128, num_classes=12),
        data=SynthShapesDataConfig(root="data/synthshapes_cpu", preset="cpu", img_size=256, max_long=384),
        optim=OptimConfig(name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4),
        sched=ScheduleConfig(name="cosine", warmup_iters=100, min_lr_factor=0.01),
        train=TrainConfig(epochs=6, batch_size=8, clip_grad=10.0, log_every=20,
                          backbone_init=shipped_trunk("r18_w025")),
        eval=DetEvalConfig(evaluator="voc", protocol="torchvision-256", also=["coco"]),
    )
