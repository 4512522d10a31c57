"""LD on SynthShapes (CPU): the half-width GFL R18 teacher (``gfl/r18_half_teacher_synthshapes``) -> the lite GFL R18
student (``gfl/r18_lite_synthshapes``), main LD + KD + VLR at the paper's weights (METHODS.md §3.6).

A fine-tune of a trained student, like the other KD-gain benchmarks: pass ``train.init_weights=<baseline
export>`` and ``distill.teacher_weights=<teacher export>``; ``benchmarks/kd_gain_ld.py`` does it per seed.
"""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.ld import LDConfig


def config():
    cfg = load_config("gfl/r18_lite_synthshapes")
    cfg.name = "ld_lite_synthshapes"
    cfg.train.epochs = 4
    cfg.sched.warmup_iters = 0
    teacher = load_config("gfl/r18_half_teacher_synthshapes").model
    cfg.distill = DistillConfig(teacher=teacher, methods=["ld"], ld=LDConfig())
    return cfg
