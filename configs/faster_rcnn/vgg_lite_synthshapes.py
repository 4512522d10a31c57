"""CPU-sized C4 Faster R-CNN (VGG-11 x 0.25, 512-unit fc6/fc7) on SynthShapes, FGFI's setting at toy scale."""
from detkd.config import load_config
from detkd.models.faster_rcnn import FasterRCNNConfig


def config():
    cfg = load_config("faster_rcnn/fpn_lite_synthshapes")
    cfg.name = "faster_rcnn_vgg_lite_synthshapes"
    cfg.model = FasterRCNNConfig.vgg(name="faster_rcnn_vgg_lite", depth=11, width=0.25, hidden=512, vgg_frozen=0,
                                     normalize="imagenet", anchor_sizes=[32, 64, 128], rpn_pre_nms=(2000, 1000),
                                     rpn_post_nms=(512, 300), roi_batch=128, score_thresh=0.05, nms_thresh=0.5,
                                     num_classes=12)
    return cfg
