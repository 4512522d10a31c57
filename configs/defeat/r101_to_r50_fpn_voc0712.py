"""DeFeat's released config: Faster R-CNN R101-FPN → R50-FPN on VOC07+12 (METHODS.md §4.2–4.6, §4.10).

Student: ``faster_rcnn/r50_fpn_voc0712`` trained with lr 0.01 and grad clip 35 (the DeFeat row, 82.04 mAP over the
80.52 baseline). Teacher: ``faster_rcnn/r101_fpn_voc0712`` (82.27), from ``distill.teacher_weights``. Neck terms on
P2–P6 (fg weight 3, bg weight 12, one 3×3 adapter per level without activation); the RoI-head KD is off as released
(``distill.defeat.head=roi`` adds it with SampleSTU; ``distill.defeat.faithful=true`` for the released SampleTEA).
Batch 8 images × 2 GPUs = 16.
"""
from detkd.config import load_config
from detkd.distill.defeat import DeFeatConfig
from detkd.distill.distiller import DistillConfig

FPN_TAPS = ["p2", "p3", "p4", "p5", "p6"]


def config():
    cfg = load_config("faster_rcnn/r50_fpn_voc0712")
    cfg.name = "defeat_r101_to_r50_fpn_voc0712"
    cfg.optim.lr = 0.01
    cfg.train.clip_grad = 35.0
    cfg.train.batch_size = 16
    teacher = load_config("faster_rcnn/r101_fpn_voc0712").model
    cfg.distill = DistillConfig(teacher=teacher, methods=["defeat"],
                                defeat=DeFeatConfig(fg_weight=3.0, bg_weight=12.0, student_taps=list(FPN_TAPS),
                                                    teacher_taps=list(FPN_TAPS)))
    return cfg
