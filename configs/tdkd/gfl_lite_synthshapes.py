"""TDKD on GFL on SynthShapes (CPU): the half-width GFL R18 teacher (``gfl/r18_half_teacher_synthshapes``) ->
the lite GFL R18 student (``gfl/r18_lite_synthshapes``), the generalised cell of the method × detector matrix.

Levels p3-p7; student taps the FPN outputs, teacher taps its towers' ``cls_feat.<l>`` / ``reg_feat.<l>``; the
negatives of the cls mask ranked by the student's background BCE ``Σ_k softplus(z_k)`` (``background_loss_rank``;
GFL's QFL mines none); probability term on every prior's 12 sigmoid columns; dynamic scale against GFL's box
loss. A fine-tune of a trained student: pass ``train.init_weights=<baseline export>`` and
``distill.teacher_weights=<teacher export>`` (``benchmarks/kd_gain_generalised.py`` does it per seed).
"""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.tdkd import TDKDConfig

LEVELS = ["p3", "p4", "p5", "p6", "p7"]


def config():
    cfg = load_config("gfl/r18_lite_synthshapes")
    cfg.name = "tdkd_gfl_lite_synthshapes"
    cfg.train.epochs = 4
    cfg.sched.warmup_iters = 0
    teacher = load_config("gfl/r18_half_teacher_synthshapes").model
    cfg.distill = DistillConfig(teacher=teacher, methods=["tdkd"], tdkd=TDKDConfig(levels=list(LEVELS)))
    return cfg
