"""DeFeat on SynthShapes (CPU): RetinaNet ResNet-18 ×0.5 → ResNet-18 ×0.25 lite (64-channel FPN, 2-conv towers).

Student ``retinanet/r18_lite_synthshapes``; teacher ``retinanet/r18_half_teacher_synthshapes`` (the capacity benchmark's teacher), from
``distill.teacher_weights``. Neck terms on P3–P7, fg 3 / bg 12, 3×3 adapters without activation; head term off
(``distill.defeat.head=dense``: sigmoid KD on the assigner's positive / negative anchors).
"""
from detkd.config import load_config
from detkd.distill.defeat import DeFeatConfig
from detkd.distill.distiller import DistillConfig

RETINA_TAPS = ["p3", "p4", "p5", "p6", "p7"]


def config():
    cfg = load_config("retinanet/r18_lite_synthshapes")
    cfg.name = "defeat_r18half_to_r18_retinanet_lite_synthshapes"
    teacher = load_config("retinanet/r18_half_teacher_synthshapes").model
    cfg.distill = DistillConfig(teacher=teacher, methods=["defeat"],
                                defeat=DeFeatConfig(student_taps=list(RETINA_TAPS), teacher_taps=list(RETINA_TAPS)))
    return cfg
