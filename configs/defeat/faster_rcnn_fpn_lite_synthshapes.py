"""DeFeat on SynthShapes (CPU): FPN Faster R-CNN ResNet-18 ×0.5 → ResNet-18 ×0.25 lite (64-channel FPN).

Student ``faster_rcnn/fpn_lite_synthshapes``; teacher ``faster_rcnn/fpn_r18_half_teacher_synthshapes`` (the capacity benchmark's teacher), from
``distill.teacher_weights``. Neck terms on P2–P6, fg 3 / bg 12, 3×3 adapters without activation; RoI-head KD off as
released (``distill.defeat.head=roi`` adds it, SampleSTU; ``distill.defeat.faithful=true`` for SampleTEA).
"""
from detkd.config import load_config
from detkd.distill.defeat import DeFeatConfig
from detkd.distill.distiller import DistillConfig

FPN_TAPS = ["p2", "p3", "p4", "p5", "p6"]


def config():
    cfg = load_config("faster_rcnn/fpn_lite_synthshapes")
    cfg.name = "defeat_r18half_to_r18_fpn_lite_synthshapes"
    teacher = load_config("faster_rcnn/fpn_r18_half_teacher_synthshapes").model
    cfg.distill = DistillConfig(teacher=teacher, methods=["defeat"],
                                defeat=DeFeatConfig(student_taps=list(FPN_TAPS), teacher_taps=list(FPN_TAPS)))
    return cfg
