"""CPU-sized C4 Faster R-CNN student on SynthShapes, FGFI's setting at toy scale: VGG-11 at quarter width
(128-channel conv5, stride 16) with BatchNorm (``vgg_bn``: plain VGG does not train from random init in 3 epochs:
it gave no detection above 0.05), 256-unit fc6/fc7, anchors 32-128 (3 ratios); the data, optimiser, schedule
and test of ``faster_rcnn/fpn_lite_synthshapes``, for 3 epochs instead of 6 (a step costs about 1.6 s at one
thread, twice RetinaNet's, and the run must stay within a quarter hour). Its teacher is ``faster_rcnn/vgg16_teacher_synthshapes``."""
from detkd.config import load_config
from detkd.models.faster_rcnn import FasterRCNNConfig
from detkd.pretrain_trunk import shipped_trunk


def config():
    cfg = load_config("faster_rcnn/fpn_lite_synthshapes")
    cfg.name = "faster_rcnn_vgg_lite_synthshapes"
    cfg.train.epochs = 3
    cfg.train.backbone_init = shipped_trunk("vgg11_w025")  # the BN VGG-11 trunk pretrained on SynthShapes crops
    cfg.model = FasterRCNNConfig.vgg(name="faster_rcnn_vgg_lite", depth=11, width=0.25, hidden=256, vgg_frozen=0,
                                     vgg_bn=True, normalize="imagenet", anchor_sizes=[32, 64, 128],
                                     rpn_pre_nms=(2000, 1000), rpn_post_nms=(512, 300), roi_batch=128,
                                     score_thresh=0.05, nms_thresh=0.5, num_classes=12)
    return cfg
