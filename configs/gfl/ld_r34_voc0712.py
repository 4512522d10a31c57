"""LD's VOC student baseline: GFL R34-FPN on VOC07+12, the R101 VOC recipe with ResNet-34 (METHODS.md §3.6, §3.10)."""
from detkd.config import load_config


def config():
    cfg = load_config("gfl/ld_r101_voc0712")
    cfg.name = "gfl_r34_voc0712"
    cfg.model.depth = 34
    return cfg
