"""LD's COCO student baseline: GFL R34-FPN, 1x schedule (METHODS.md §3.2, §3.6; §3.10 baseline row).

As the R101 teacher with ResNet-34 and the 1x schedule: 12 epochs, x0.1 after 8 and 11; batch 16, lr 0.01 (the
LD configs run 0.01 x batch / 16, e.g. 0.00375 at batch 6). Distillation adds LD on top (the methods' configs).
"""
from detkd.config import load_config


def config():
    cfg = load_config("gfl/ld_r101_coco_2x")
    cfg.name = "gfl_r34_coco_1x"
    cfg.model.depth = 34
    cfg.train.epochs = 12
    cfg.sched.milestones = [8, 11]
    cfg.data.short = []  # the 1x schedule trains single-scale, 1333 x 800
    return cfg
