"""CPU-sized Faster R-CNN (ResNet-18, 64-channel FPN, trainable BN) on SynthShapes (12 classes), the
two-stage family of the KD benchmarks at toy scale: 320 input, SGD with warm-up and cosine decay, VOC07 mAP
with the ``torchvision-320`` test. Needs SynthShapes (the data issue's generator and reader)."""
from detkd.config import (DetEvalConfig, ExperimentConfig, OptimConfig, ScheduleConfig, SynthShapesDataConfig,
                          TrainConfig)
from detkd.models.faster_rcnn import FasterRCNNConfig


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="faster_rcnn_fpn_lite_synthshapes",
        model=FasterRCNNConfig.fpn(name="faster_rcnn_fpn_lite", depth=18, norm="bn", trainable_layers=5,
                                   fpn_channels=64, hidden=256, anchor_sizes=[16, 32, 64, 128, 256],
                                   rpn_pre_nms=(1000, 500), rpn_post_nms=(512, 300), roi_batch=128, num_classes=12),
        data=SynthShapesDataConfig(root="data/synthshapes", img_size=320),
        optim=OptimConfig(name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4),
        sched=ScheduleConfig(name="cosine", warmup_iters=100, min_lr_factor=0.01),
        train=TrainConfig(epochs=12, batch_size=8, clip_grad=10.0, log_every=20),
        eval=DetEvalConfig(evaluator="voc", protocol="torchvision-320", also=["coco"]),
    )
