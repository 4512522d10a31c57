"""FGFI's teacher: Faster R-CNN VGG16 (faster-rcnn.pytorch C4) on VOC2007 trainval (METHODS.md §2.2, §2.5, §2.8).

Short side 600 with horizontal flips, caffe BGR means; batch 1, SGD lr 1e-3, momentum 0.9, wd 5e-4 on weights
and 0 on biases, bias lr x2, global grad-norm clip 10; 7 epochs with x0.1 before epoch 6 (the reference's
``epoch % (lr_decay_step + 1) == 0`` with lr_decay_step 5, i.e. after 5 epochs). conv1-conv2 frozen.
Test: ``jwyang-600`` (NMS 0.3 per class, 100 detections, score > 0), VOC07 test mAP. Reported: 70.1.
Needs VOC2007 in VOCdevkit layout at data/VOCdevkit (see README) and ImageNet VGG16 at
``train.backbone_init`` (jwyang's caffe ``vgg16_caffe.pth``).
"""
from detkd.config import DetEvalConfig, ExperimentConfig, OptimConfig, ScheduleConfig, TrainConfig, VOCDataConfig
from detkd.models.faster_rcnn import FasterRCNNConfig


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="faster_rcnn_vgg16_voc07",
        model=FasterRCNNConfig.vgg(depth=16, num_classes=20, vgg_frozen=10),
        data=VOCDataConfig(roots=["data/VOCdevkit/VOC2007"], img_size=600, max_long=1000),
        optim=OptimConfig(name="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4, bias_lr_mult=2.0,
                          bias_weight_decay=0.0),
        sched=ScheduleConfig(name="step", milestones=[5], gamma=0.1),
        train=TrainConfig(epochs=7, batch_size=1, clip_grad=10.0, log_every=100),
        eval=DetEvalConfig(evaluator="voc", protocol="jwyang-600"),
    )
