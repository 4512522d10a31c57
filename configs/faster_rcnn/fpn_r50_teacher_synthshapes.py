"""The two-stage teacher of the SynthShapes capacity benchmark: Faster R-CNN ResNet-50, 128-channel FPN,
1024-unit box head; everything else (data, schedule, epochs, test) is ``faster_rcnn/fpn_lite_synthshapes``'s."""
from detkd.config import load_config
from detkd.models.faster_rcnn import FasterRCNNConfig


def config():
    cfg = load_config("faster_rcnn/fpn_lite_synthshapes")
    cfg.name = "faster_rcnn_fpn_r50_teacher_synthshapes"
    cfg.model = FasterRCNNConfig.fpn(name="faster_rcnn_fpn", depth=50, norm="bn", trainable_layers=5,
                                     fpn_channels=128, hidden=1024, anchor_sizes=[16, 32, 64, 128, 256],
                                     rpn_pre_nms=(1000, 500), rpn_post_nms=(512, 300), roi_batch=128, num_classes=12)
    return cfg
