"""The C4 teacher on SynthShapes (FGFI's VGG16 -> VGG11 at toy scale): VGG-16 at 3/8 width (192-channel conv5),
256-unit fc6/fc7; everything else is ``faster_rcnn/vgg_lite_synthshapes``'s. Small enough to ship in float16
(under 10 MB; the fc6 on the 7x7x192 RoI features is most of it)."""
from detkd.config import load_config
from detkd.pretrain_trunk import shipped_trunk


def config():
    cfg = load_config("faster_rcnn/vgg_lite_synthshapes")
    cfg.name = "faster_rcnn_vgg16_teacher_synthshapes"
    cfg.model.name, cfg.model.depth, cfg.model.width = "faster_rcnn_vgg", 16, 0.375
    cfg.train.backbone_init = shipped_trunk("vgg16_w0375")  # the BN VGG-16 trunk pretrained on SynthShapes crops
    return cfg
