"""CPU-sized RetinaNet (ResNet-18, 64-channel FPN, 2-conv towers, trainable BN, anchors 16-256) on SynthShapes
(12 shape classes, 320 input): the student size of the one-stage KD benchmarks. Plain SGD with warm-up and cosine
decay; needs the SynthShapes data set (``detkd data synthshapes``)."""
from detkd.config import (DetEvalConfig, ExperimentConfig, OptimConfig, ScheduleConfig, SynthShapesDataConfig,
                          TrainConfig)
from detkd.models.retinanet import RetinaNetConfig


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="retinanet_r18_lite_synthshapes",
        model=RetinaNetConfig(depth=18, num_classes=12, fpn_channels=64, num_convs=2,
                              anchor_base=(16, 32, 64, 128, 256), detections_per_img=100),
        data=SynthShapesDataConfig(root="data/synthshapes", img_size=320),
        optim=OptimConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4),
        sched=ScheduleConfig(name="cosine", warmup_iters=100, min_lr_factor=0.01),
        train=TrainConfig(epochs=12, batch_size=8, clip_grad=10.0, log_every=20),
        eval=DetEvalConfig(evaluator="voc", protocol="torchvision-320", also=["coco"]),
    )
