"""The two-stage FPN teacher on SynthShapes (DeFeat's Faster R-CNN at CPU scale): ResNet-18 at half width,
96-channel FPN, the same 256-unit two-fc box head; data, anchors, optimiser, schedule, epochs and test are
``faster_rcnn/fpn_lite_synthshapes``'s. Small enough to ship in float16 (under 10 MB)."""
from detkd.config import load_config
from detkd.pretrain_trunk import shipped_trunk


def config():
    cfg = load_config("faster_rcnn/fpn_lite_synthshapes")
    cfg.name = "faster_rcnn_fpn_r18_half_teacher_synthshapes"
    cfg.model.name, cfg.model.width, cfg.model.fpn_channels = "faster_rcnn_fpn", 0.5, 96
    cfg.train.backbone_init = shipped_trunk("r18_w05")  # the half-width SynthShapes trunk
    return cfg
