"""The one-stage teacher of the SynthShapes capacity benchmark (DeFeat's RetinaNet at toy scale): ResNet-50,
128-channel FPN, 4-conv towers; everything else is ``retinanet/r18_lite_synthshapes``'s."""
from detkd.config import load_config
from detkd.models.retinanet import RetinaNetConfig


def config():
    cfg = load_config("retinanet/r18_lite_synthshapes")
    cfg.name = "retinanet_r50_teacher_synthshapes"
    cfg.model = RetinaNetConfig(depth=50, num_classes=12, fpn_channels=128, num_convs=4,
                                anchor_base=(16, 32, 64, 128, 256), detections_per_img=100)
    return cfg
