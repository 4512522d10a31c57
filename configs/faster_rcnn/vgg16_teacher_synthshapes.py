"""The C4 teacher of the SynthShapes capacity benchmark (FGFI's VGG16 -> VGG11 at toy scale): VGG-16 x 0.5 with
1024-unit fc6/fc7; everything else is ``faster_rcnn/vgg_lite_synthshapes``'s."""
from detkd.config import load_config
from detkd.models.faster_rcnn import FasterRCNNConfig


def config():
    cfg = load_config("faster_rcnn/vgg_lite_synthshapes")
    cfg.name = "faster_rcnn_vgg16_teacher_synthshapes"
    cfg.model = FasterRCNNConfig.vgg(name="faster_rcnn_vgg", depth=16, width=0.5, hidden=1024, vgg_frozen=0,
                                     normalize="imagenet", anchor_sizes=[32, 64, 128], rpn_pre_nms=(2000, 1000),
                                     rpn_post_nms=(512, 300), roi_batch=128, score_thresh=0.05, nms_thresh=0.5,
                                     num_classes=12)
    return cfg
