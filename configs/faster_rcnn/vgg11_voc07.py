"""FGFI's student baseline: Faster R-CNN VGG11 on VOC2007 trainval (METHODS.md §2.2, §2.5, README table §2.8).

As the VGG16 teacher but batch 4, lr 3e-3, 15 epochs, x0.1 after 8 epochs (lr_decay_step 8), and VGG11's
``features[0:7]`` (conv1, conv2, conv3_1) frozen. Reported: 59.6 (67.6 with FGFI imitation).
"""
from detkd.config import load_config


def config():
    cfg = load_config("faster_rcnn/vgg16_voc07")
    cfg.name = "faster_rcnn_vgg11_voc07"
    cfg.model.depth = 11
    cfg.model.vgg_frozen = 7
    cfg.optim.lr = 3e-3
    cfg.sched.milestones = [8]
    cfg.train.epochs = 15
    cfg.train.batch_size = 4
    return cfg
