"""Self-LD on SynthShapes (CPU): a trained lite GFL R18 teaches the lite GFL R18 (METHODS.md §3.5); otherwise
``ld/ld_lite_synthshapes``."""
from detkd.config import load_config


def config():
    cfg = load_config("ld/ld_lite_synthshapes")
    cfg.name = "self_ld_lite_synthshapes"
    cfg.distill.teacher = load_config("gfl/r18_lite_synthshapes").model
    return cfg
