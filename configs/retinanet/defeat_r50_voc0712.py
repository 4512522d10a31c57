"""DeFeat's RetinaNet student: RetinaNet R50-FPN on VOC07+12, the R101 teacher's recipe with ResNet-50
(METHODS.md §4.6, §4.7; paper: R50 RetinaNet 36.5 -> 39.7 COCO AP with DeFeat)."""
from detkd.config import load_config


def config():
    cfg = load_config("retinanet/defeat_r101_voc0712")
    cfg.name = "retinanet_r50_voc0712"
    cfg.model.depth = 50
    return cfg
