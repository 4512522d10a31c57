"""The GFL teacher on SynthShapes (LD's teacher at CPU scale): ``gfl/r18_lite_synthshapes`` with the ResNet-18 at
half width instead of quarter width (3.2M parameters, shipped in float16 as ``detkd/assets/
synthshapes_teacher_gfl.safetensors``). Same FPN, towers, reg_max, strides, priors, data, schedule and epochs, so
the capacity benchmark compares like with like and LD compares the distributions bin by bin."""
from detkd.config import load_config
from detkd.pretrain_trunk import shipped_trunk


def config():
    cfg = load_config("gfl/r18_lite_synthshapes")
    cfg.name = "gfl_r18_half_teacher_synthshapes"
    cfg.model.width = 0.5
    cfg.train.backbone_init = shipped_trunk("r18_w05")  # the half-width SynthShapes trunk
    return cfg
