"""Teacher-assistant chain, stage 1 of 2: GFL R101-FPN -> GFL R50-FPN assistant with LD on VOC07+12 (METHODS.md
§3.5, v1 paper's TA strategy). Run the whole chain with
``detkd distill-chain ld/ta_r101_r50_voc ld/ta_r50_r18_voc distill.teacher_weights=R101.safetensors``: the
assistant exported from this stage becomes the teacher of ``ld/ta_r50_r18_voc``."""
from detkd.config import load_config


def config():
    cfg = load_config("ld/ld_r101_r18_voc")
    cfg.name = "ta_r101_r50_voc"
    cfg.model = load_config("gfl/ld_r50_voc0712").model
    return cfg
