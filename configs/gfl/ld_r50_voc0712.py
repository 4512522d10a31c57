"""LD's VOC student baseline: GFL R50-FPN on VOC07+12, the R101 VOC recipe with ResNet-50 (METHODS.md §3.6, §3.10)."""
from detkd.config import load_config


def config():
    cfg = load_config("gfl/ld_r101_voc0712")
    cfg.name = "gfl_r50_voc0712"
    cfg.model.depth = 50
    return cfg
