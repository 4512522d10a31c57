"""FGFI as in the paper's repository: Faster R-CNN VGG16 → VGG11 on VOC2007 trainval (METHODS.md §2.2, §2.5, §2.8).

Student: the VGG11 baseline (``faster_rcnn/vgg11_voc07``: conv1, conv2, conv3_1 frozen, ``features[0:7]``).
Teacher: the VGG16 model of ``faster_rcnn/vgg16_voc07`` (conv1_x, conv2_x frozen; frozen entirely here anyway),
loaded from ``distill.teacher_weights``. Imitation of the teacher's conv5_3 by the student's conv5_2 (both the
``c5`` tap, stride 16, 512 channels) through a 3×3 conv + ReLU adapter, ψ 0.5, λ 0.01, zero weight for the first
400 iterations. The README table's imitation recipe: batch 16, lr 3e-3, ×0.1 after 8 epochs, 15 epochs, grad
clip 10. Reported: 59.6 → 67.6 VOC07 mAP.
"""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.fgfi import FGFIConfig


def config():
    cfg = load_config("faster_rcnn/vgg11_voc07")
    cfg.name = "fgfi_vgg16_to_vgg11_voc07"
    cfg.train.batch_size = 16
    teacher = load_config("faster_rcnn/vgg16_voc07").model
    cfg.distill = DistillConfig(teacher=teacher, methods=["fgfi"],
                                fgfi=FGFIConfig(weight=0.01, psi=0.5, warmup_iters=400, student_taps=["c5"],
                                                teacher_taps=["c5"]))
    return cfg
