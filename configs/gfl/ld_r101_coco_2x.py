"""LD's COCO teacher: GFL R101-FPN, mmdet model-zoo 2x schedule (METHODS.md §3.2, §3.5, §3.6).

mmdet ``gfl_r101_fpn_mstrain_2x_coco``: keep-ratio resize, long side <= 1333, multi-scale short side 480-960
(mmdet draws any size in the range; detkd one of 480, 512, ..., 960), flip 0.5, ImageNet mean/std (mmdet's 0..255
values), pad 32; batch 16, SGD lr 0.01, momentum 0.9, wd 1e-4, linear warm-up 500 iterations from 0.001;
24 epochs, x0.1 after 16 and 22.
Test ``mmdet-gfl``: nms_pre 1000, score 0.05, NMS 0.6, 100 detections; COCO AP (§3.10: 44.6 AP val, the
teacher of the R18 / R34 / R50 student rows).
"""
from detkd.config import COCODataConfig, DetEvalConfig, ExperimentConfig, OptimConfig, ScheduleConfig, TrainConfig
from detkd.models.gfl import GFLConfig


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="gfl_r101_coco_2x",
        model=GFLConfig(depth=101, num_classes=80),
        data=COCODataConfig(img_size=800, short=list(range(480, 961, 32)), max_long=1333),
        optim=OptimConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4),
        sched=ScheduleConfig(name="step", warmup_iters=500, warmup_factor=1e-3, milestones=[16, 22], gamma=0.1),
        train=TrainConfig(epochs=24, batch_size=16, num_workers=4, log_every=50),
        eval=DetEvalConfig(evaluator="coco", protocol="mmdet-gfl"),
    )
