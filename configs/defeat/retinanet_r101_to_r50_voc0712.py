"""DeFeat on RetinaNet R101-FPN → R50-FPN, VOC07+12 (METHODS.md §4.7; the reference has no runnable RetinaNet
config, paper: R50 RetinaNet 36.5 → 39.7 COCO AP).

Student ``retinanet/defeat_r50_voc0712``, teacher ``retinanet/defeat_r101_voc0712`` (from
``distill.teacher_weights``). The neck loss of §4.4 on P3–P7 (strides 8–128; the level rule puts objects under
112 px on P3), fg 3 / bg 12; the head term is off as in the released Faster R-CNN config
(``distill.defeat.head=dense``: sigmoid KD on the assigner's positive / negative anchors, our design).
"""
from detkd.config import load_config
from detkd.distill.defeat import DeFeatConfig
from detkd.distill.distiller import DistillConfig

RETINA_TAPS = ["p3", "p4", "p5", "p6", "p7"]


def config():
    cfg = load_config("retinanet/defeat_r50_voc0712")
    cfg.name = "defeat_retinanet_r101_to_r50_voc0712"
    teacher = load_config("retinanet/defeat_r101_voc0712").model
    cfg.distill = DistillConfig(teacher=teacher, methods=["defeat"],
                                defeat=DeFeatConfig(student_taps=list(RETINA_TAPS), teacher_taps=list(RETINA_TAPS)))
    return cfg
