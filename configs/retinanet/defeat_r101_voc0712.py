"""DeFeat's RetinaNet teacher: RetinaNet R101-FPN on VOC07+12 trainval (METHODS.md §4.6, §4.7).

The DeFeat repository ships no RetinaNet config (§4.7: that path is not runnable as released), so this is the
DeFeat VOC recipe of §4.6 with mmdet's RetinaNet settings: keep-ratio resize to fit (1000, 600), flip 0.5, ImageNet
mean/std, pad 32; batch 16, SGD lr 0.01, momentum 0.9, wd 1e-4, grad clip 35, linear warm-up 500 iterations from
0.001; 12 real epochs (4 "epochs" of the x3 repeated set) with x0.1 after 9. Frozen stem + layer1 and BN in eval
mode (mmdet frozen_stages=1, norm_eval). Test: ``mmdet-voc`` geometry, score 0.05, NMS 0.5, 100 detections; VOC07
11-point mAP. Needs VOC2007 + VOC2012 at data/VOCdevkit and an ImageNet ResNet-101 (``train.backbone_init``).
"""
from detkd.config import DetEvalConfig, ExperimentConfig, OptimConfig, ScheduleConfig, TrainConfig, VOCDataConfig
from detkd.models.retinanet import RetinaNetConfig


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="retinanet_r101_voc0712",
        model=RetinaNetConfig(depth=101, num_classes=20, label_base=1, frozen_stages=1, norm_eval=True,
                              detections_per_img=100),
        data=VOCDataConfig(roots=["data/VOCdevkit/VOC2007", "data/VOCdevkit/VOC2012"], img_size=600, max_long=1000),
        optim=OptimConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4),
        sched=ScheduleConfig(name="step", warmup_iters=500, warmup_factor=1e-3, milestones=[9], gamma=0.1),
        train=TrainConfig(epochs=12, batch_size=16, clip_grad=35.0, num_workers=4, log_every=50),
        eval=DetEvalConfig(evaluator="voc", protocol="mmdet-voc"),
    )
