"""DeFeat's student baseline: Faster R-CNN R50-FPN on VOC07+12 (METHODS.md §4.6, §4.10 "released baseline").

As the R101 teacher with ResNet-50 and lr 0.01 (bn, no clipping: 80.52 mAP). The DeFeat distillation run
uses lr 0.01 with grad clipping 35 (82.04).
"""
from detkd.config import load_config


def config():
    cfg = load_config("faster_rcnn/r101_fpn_voc0712")
    cfg.name = "faster_rcnn_r50_fpn_voc0712"
    cfg.model.depth = 50
    cfg.optim.lr = 0.01
    return cfg
