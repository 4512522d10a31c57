"""CPU-sized GFL teacher for the SynthShapes LD runs: ``gfl/r18_lite_synthshapes`` with a ResNet-34 trunk and
3-conv towers (same 64-channel FPN, reg_max 16, strides and priors, so LD compares bin by bin)."""
from detkd.config import load_config


def config():
    cfg = load_config("gfl/r18_lite_synthshapes")
    cfg.name = "gfl_r34_lite_synthshapes"
    cfg.model.depth = 34
    cfg.model.stacked_convs = 3
    return cfg
