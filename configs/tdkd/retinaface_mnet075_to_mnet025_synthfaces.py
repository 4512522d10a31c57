"""TDKD on SynthFaces (CPU): fine-tune a converged 0.25 student with the 0.75 task-conv teacher.

As in the paper (METHODS.md §1.8, §1.11-9) TDKD fine-tunes a converged student; the demo passes
`train.init_weights=<baseline export>` and `distill.teacher_weights=<teacher export>` and compares against
the same fine-tune without distillation. Dynamic feature scale sg(L_loc)/sg(L_feat) as in the released
weights; trainable adapters (the clean variant; `distill.tdkd.faithful=true` freezes them as released).
"""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.tdkd import TDKDConfig


def config():
    cfg = load_config("retinaface/mnet025_synthfaces")
    cfg.name = "tdkd_mnet075_to_mnet025_synthfaces"
    cfg.train.epochs = 10  # the demo's fine-tune length; the same for the no-KD control and `feat`
    cfg.sched.warmup_iters = 0
    teacher = load_config("retinaface/mnet075_tasks_synthfaces").model
    cfg.distill = DistillConfig(teacher=teacher, methods=["tdkd"], tdkd=TDKDConfig(scale="dynamic"))
    return cfg
