"""LD on VOC07+12: GFL R101-FPN -> GFL R18-FPN, the released "Main LD" VOC config (METHODS.md §3.6, §3.10).

Student recipe = ``gfl/ld_r18_voc0712`` (VOC07+12 x3 repeat, 4 repeated epochs = 12 real ones, step at real
epoch 9, lr 0.00375 at batch 6); teacher = the ``gfl/ld_r101_voc0712`` model from ``distill.teacher_weights``.
The released config only names main LD, but LDHead's class defaults silently switch on KD on the
classification logits (T 2, weight 10) and VLR LD (T 10, weight 0.25, α 0.25) — §3.11-2; we write all of them
out, so ``distill.ld.kd_weight=0`` / ``distill.ld.vlr_weight=0`` gives the README's "main LD only" row. The
released R18 VOC config uses CIoU (weight 2) instead of GIoU for the box loss; detkd's GFL has GIoU only
(weight 2), which we keep.
"""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.ld import LDConfig


def config():
    cfg = load_config("gfl/ld_r18_voc0712")
    cfg.name = "ld_r101_r18_voc"
    teacher = load_config("gfl/ld_r101_voc0712").model
    cfg.distill = DistillConfig(teacher=teacher, methods=["ld"], ld=LDConfig(
        ld_weight=0.25, ld_T=10.0, kd_weight=10.0, kd_T=2.0, vlr_weight=0.25, vlr_T=10.0, vlr_alpha=0.25))
    return cfg
