"""DeFeat's teacher: Faster R-CNN R101-FPN on VOC07+12 trainval (METHODS.md §4.2, §4.6, §4.10).

mmdetection 2.0 recipe: keep-ratio resize to fit (1000, 600), flip 0.5, ImageNet mean/std, pad 32; batch 16
(8 x 2 GPUs), SGD lr 0.02, momentum 0.9, wd 1e-4, linear warm-up 200 iterations from 0.001; 12 real epochs
(4 "epochs" of the x3 repeated set) with x0.1 after 9 (step at repeated epoch 3); no grad clipping.
RPN / RCNN as torchvision's defaults (anchors 32-512, 256 anchors, 512 RoIs, 25 % fg) with L1 box losses.
Frozen BN and stem + layer1 frozen (mmdet: norm_eval, frozen_stages=1; mmdet still trains the BN affine
parameters, detkd freezes them as torchvision does). Test ``mmdet-600``: VOC07 11-point mAP. Reported: 82.27.
Needs VOC2007 + VOC2012 at data/VOCdevkit and an ImageNet ResNet-101 at ``train.backbone_init``.
"""
from detkd.config import DetEvalConfig, ExperimentConfig, OptimConfig, ScheduleConfig, TrainConfig, VOCDataConfig
from detkd.models.faster_rcnn import FasterRCNNConfig


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="faster_rcnn_r101_fpn_voc0712",
        model=FasterRCNNConfig.fpn(depth=101, num_classes=20, trainable_layers=3, rpn_box_beta=0.0,
                                   roi_box_beta=0.0),
        data=VOCDataConfig(roots=["data/VOCdevkit/VOC2007", "data/VOCdevkit/VOC2012"], img_size=600, max_long=1000),
        optim=OptimConfig(name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4),
        sched=ScheduleConfig(name="step", warmup_iters=200, warmup_factor=1e-3, milestones=[9], gamma=0.1),
        train=TrainConfig(epochs=12, batch_size=16, num_workers=4, log_every=50),
        eval=DetEvalConfig(evaluator="voc", protocol="mmdet-600"),
    )
