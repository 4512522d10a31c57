"""Self-LD on VOC07+12: a trained GFL R18-FPN teaches a fresh GFL R18-FPN (METHODS.md §3.5; README: R18 -> R18
+0.3 AP). Everything as ``ld/ld_r101_r18_voc`` except the teacher's architecture, which is the student's."""
from detkd.config import load_config


def config():
    cfg = load_config("ld/ld_r101_r18_voc")
    cfg.name = "self_ld_r18_r18_voc"
    cfg.distill.teacher = load_config("gfl/ld_r18_voc0712").model
    return cfg
