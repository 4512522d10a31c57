"""The RetinaNet teacher on SynthShapes (DeFeat's RetinaNet at CPU scale): ResNet-18 at half width, 128-channel
FPN, 3-conv towers; data, anchors, optimiser, schedule, epochs and test are ``retinanet/r18_lite_synthshapes``'s, so
the capacity benchmark compares like with like. Small enough to ship in float16 (under 10 MB)."""
from detkd.config import load_config
from detkd.pretrain_trunk import shipped_trunk


def config():
    cfg = load_config("retinanet/r18_lite_synthshapes")
    cfg.name = "retinanet_r18_half_teacher_synthshapes"
    cfg.model.width, cfg.model.fpn_channels, cfg.model.num_convs = 0.5, 128, 3
    cfg.train.backbone_init = shipped_trunk("r18_w05")  # the half-width SynthShapes trunk
    return cfg
