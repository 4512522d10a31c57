"""LD on COCO: GFL R101-FPN (2x ms teacher) -> GFL R18-FPN 1x (METHODS.md §3.3, §3.5, §3.6; §3.10 R18 row).

Student recipe = ``gfl/ld_r18_coco_1x``; teacher = the ``gfl/ld_r101_coco_2x`` model, loaded from
``distill.teacher_weights`` (e.g. an ``import-weights mmdet-gfl`` of the model-zoo checkpoint). Main LD (T 10,
weight 0.25, student-confidence weights, /4), KD on the classification logits (T 2, weight 10) and VLR LD (T 10,
weight 0.25, /16, α 0.25) — the COCO R18 config enables KD and VLR through LDHead's defaults (§3.11-2), so they
are written out here. Score-voting Cluster-DIoU-NMS is optional at test time: ``--nms cluster-diou-voting``.
"""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.ld import LDConfig


def config():
    cfg = load_config("gfl/ld_r18_coco_1x")
    cfg.name = "ld_r101_r18_coco"
    teacher = load_config("gfl/ld_r101_coco_2x").model
    cfg.distill = DistillConfig(teacher=teacher, methods=["ld"], ld=LDConfig(
        ld_weight=0.25, ld_T=10.0, kd_weight=10.0, kd_T=2.0, vlr_weight=0.25, vlr_T=10.0, vlr_alpha=0.25))
    return cfg
