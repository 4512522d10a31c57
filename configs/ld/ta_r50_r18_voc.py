"""Teacher-assistant chain, stage 2 of 2: the GFL R50-FPN assistant -> GFL R18-FPN with LD on VOC07+12
(METHODS.md §3.5). In ``detkd distill-chain`` its ``distill.teacher_weights`` is the export of stage 1
(``ld/ta_r101_r50_voc``); run alone, set it by hand."""
from detkd.config import load_config


def config():
    cfg = load_config("ld/ld_r101_r18_voc")
    cfg.name = "ta_r50_r18_voc"
    cfg.distill.teacher = load_config("gfl/ld_r50_voc0712").model
    return cfg
