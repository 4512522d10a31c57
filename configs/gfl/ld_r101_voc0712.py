"""LD's VOC teacher: GFL R101-FPN on VOC07+12 trainval (METHODS.md §3.6 VOC schedule; §3.10 VOC table).

VOC07+12 trainval repeated x3, 4 "epochs" (= 12 real epochs) with x0.1 at repeated epoch 3 (= real epoch 9),
linear warm-up 500 iterations from 0.001, SGD lr 0.00375 at batch 6 (momentum 0.9, wd 1e-4); mmdet's VOC input
(keep-ratio resize to fit (1000, 600), flip 0.5, pad 32). Test ``mmdet-voc`` geometry with GFL's test settings
(nms_pre 1000, score 0.05, NMS 0.6, 100 detections); VOC07 mAP. Needs VOC2007 + VOC2012 at data/VOCdevkit.
"""
from detkd.config import DetEvalConfig, ExperimentConfig, OptimConfig, ScheduleConfig, TrainConfig, VOCDataConfig
from detkd.models.gfl import GFLConfig


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="gfl_r101_voc0712",
        model=GFLConfig(depth=101, num_classes=20),
        data=VOCDataConfig(roots=["data/VOCdevkit/VOC2007", "data/VOCdevkit/VOC2012"], img_size=600, max_long=1000),
        optim=OptimConfig(name="sgd", lr=0.00375, momentum=0.9, weight_decay=1e-4),
        sched=ScheduleConfig(name="step", warmup_iters=500, warmup_factor=1e-3, milestones=[9], gamma=0.1),
        train=TrainConfig(epochs=12, batch_size=6, num_workers=4, log_every=50),
        eval=DetEvalConfig(evaluator="voc", protocol="mmdet-voc"),
    )
