"""FGFI on SynthShapes (CPU), the paper's pair at toy scale: C4 Faster R-CNN VGG-16 ×0.375 → VGG-11 ×0.25.

Student ``faster_rcnn/vgg_lite_synthshapes``; teacher ``faster_rcnn/vgg16_teacher_synthshapes`` (the capacity benchmark's teacher;
conv5_3 → conv5_2, the ``c5`` tap at stride 16, 192 teacher channels from 128 through the adapter), from ``distill.teacher_weights``. The KD benchmark fine-tunes a trained student
(``train.init_weights``) for the same schedule with and without distillation. ψ 0.5, λ 0.01, 3×3 conv + ReLU
adapter; the 400-iteration zero warm-up is kept (``distill.fgfi.warmup_iters=0`` imitates at once).
"""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.fgfi import FGFIConfig


def config():
    cfg = load_config("faster_rcnn/vgg_lite_synthshapes")
    cfg.name = "fgfi_vgg16_to_vgg11_lite_synthshapes"
    teacher = load_config("faster_rcnn/vgg16_teacher_synthshapes").model
    cfg.distill = DistillConfig(teacher=teacher, methods=["fgfi"],
                                fgfi=FGFIConfig(student_taps=["c5"], teacher_taps=["c5"]))
    return cfg
