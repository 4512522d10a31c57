"""FGFI on SynthShapes (CPU) on the FPN Faster R-CNN: ResNet-18 ×0.5 → ResNet-18 ×0.25 lite (64-channel FPN).

Student ``faster_rcnn/fpn_lite_synthshapes``; teacher ``faster_rcnn/fpn_r18_half_teacher_synthshapes`` (the capacity benchmark's teacher), from
``distill.teacher_weights``. FGFI's own loss (λ 0.01, 2·N normalisation, 3×3 conv + ReLU adapters, 400-iteration
zero warm-up) with the per-level mask on P2–P6 (each level's anchors against the GTs, as DeFeat's port does).
"""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.fgfi import FGFIConfig

FPN_TAPS = ["p2", "p3", "p4", "p5", "p6"]


def config():
    cfg = load_config("faster_rcnn/fpn_lite_synthshapes")
    cfg.name = "fgfi_r18half_to_r18_fpn_lite_synthshapes"
    teacher = load_config("faster_rcnn/fpn_r18_half_teacher_synthshapes").model
    cfg.distill = DistillConfig(teacher=teacher, methods=["fgfi"],
                                fgfi=FGFIConfig(student_taps=list(FPN_TAPS), teacher_taps=list(FPN_TAPS)))
    return cfg
