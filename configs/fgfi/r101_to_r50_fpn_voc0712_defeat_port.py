"""DeFeat's FGFI port (the ``mask-neck-roi`` row of METHODS.md §4.6): Faster R-CNN R101-FPN → R50-FPN, VOC07+12.

FGFI's mask per FPN level (that level's anchors against the GTs, IoU > 0.5·max, strict), DeFeat's normalisation
(2·C·N), a 3×3 adapter per level without activation, ``hint_neck_w`` 3 spread as 3/5 per level, no warm-up,
IoU without the "+1" (mmdetection v2). Batch 4 × 2 GPUs = 8, lr 0.02, grad clip 35, otherwise the DeFeat
schedule. The repository README reports 81.04 / 81.17 mAP for its FGFI rows.
"""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.fgfi import FGFIConfig

FPN_TAPS = ["p2", "p3", "p4", "p5", "p6"]


def config():
    cfg = load_config("defeat/r101_to_r50_fpn_voc0712")
    cfg.name = "fgfi_port_r101_to_r50_fpn_voc0712"
    cfg.optim.lr = 0.02
    cfg.train.batch_size = 8
    cfg.distill = DistillConfig(teacher=cfg.distill.teacher, methods=["fgfi"],
                                fgfi=FGFIConfig(variant="defeat_port", weight=3.0, psi=0.5, warmup_iters=0,
                                                plus1=False, student_taps=list(FPN_TAPS),
                                                teacher_taps=list(FPN_TAPS)))
    return cfg
