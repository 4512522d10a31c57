"""RetinaFace-MobileNet0.25 (ReLU) on WIDER FACE train with the TDKD recipe (METHODS.md §1.8).

640 input, batch 32, SGD lr 2e-2 (momentum 0.9, wd 5e-4 on all params), ×0.1 at epochs 55 and 68 of 80,
no warm-up. Needs WIDER FACE train in retinaface_gt_v1.1 layout at data/widerface (see README).
"""
from detkd.config import DetDataConfig, DetEvalConfig, ExperimentConfig, OptimConfig, ScheduleConfig, TrainConfig
from detkd.models.retinaface import RetinaFaceConfig


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="mnet025_widerface_tdkd",
        model=RetinaFaceConfig(width=0.25, activation="relu"),
        data=DetDataConfig(name="widerface", root="data/widerface", img_size=640),
        optim=OptimConfig(name="sgd", lr=2e-2, momentum=0.9, weight_decay=5e-4),
        sched=ScheduleConfig(name="step", milestones=[55, 68], gamma=0.1),
        train=TrainConfig(epochs=80, batch_size=32, num_workers=8, log_every=50),
        eval=DetEvalConfig(protocol="tdkd-1600"),
    )
