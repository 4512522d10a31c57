"""LD on RetinaNet on SynthShapes (CPU): the half-width RetinaNet R18 teacher (``retinanet/r18_half_teacher_synthshapes``,
the shipped ``detkd/assets/synthshapes_teacher_retinanet``) -> the lite RetinaNet R18 student
(``retinanet/r18_lite_synthshapes``), both with the box-distribution branch (``dist_reg_max=16``, DFL 0.25, see
``detkd.models.retinanet``), main LD + KD + VLR at the paper's weights (METHODS.md §3.6). The VLR's per-GT
threshold is RetinaNet's ``fg_iou`` (0.5), the generalisation ``detkd.distill.ld`` documents.

A fine-tune of a trained student, like the other KD-gain benchmarks: pass ``train.init_weights=<baseline
export>`` and ``distill.teacher_weights=<teacher export>``. Teacher and baseline must have been trained WITH the
branch (``model.dist_reg_max=16``): a RetinaNet trained without it has no ``box_dist`` weights to distil.
``benchmarks/kd_gain_generalised.py`` adds the branch to the shipped teacher and trains only the branch (DFL, the
rest frozen), so the teacher's detections stay the shipped ones.
"""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.ld import LDConfig

REG_MAX = 16


def config():
    cfg = load_config("retinanet/r18_lite_synthshapes")
    cfg.name = "ld_retinanet_lite_synthshapes"
    cfg.model.dist_reg_max = REG_MAX
    cfg.train.epochs = 4
    cfg.sched.warmup_iters = 0
    teacher = load_config("retinanet/r18_half_teacher_synthshapes").model
    teacher.dist_reg_max = REG_MAX
    cfg.distill = DistillConfig(teacher=teacher, methods=["ld"], ld=LDConfig())
    return cfg
