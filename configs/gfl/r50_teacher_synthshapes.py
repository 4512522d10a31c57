"""The GFL teacher of the SynthShapes capacity benchmark (LD's teacher at toy scale): ResNet-50, 128-channel FPN,
4-conv GN towers (32 groups); everything else is ``gfl/r18_lite_synthshapes``'s."""
from detkd.config import load_config
from detkd.models.gfl import GFLConfig


def config():
    cfg = load_config("gfl/r18_lite_synthshapes")
    cfg.name = "gfl_r50_teacher_synthshapes"
    cfg.model = GFLConfig(depth=50, num_classes=12, fpn_channels=128, stacked_convs=4, gn_groups=32, frozen_stages=0,
                          norm_eval=False)
    return cfg
