"""FGFI on SynthFaces (CPU): the TDKD fine-tune schedule with fine-grained imitation instead of TDKD.

Same student initialisation, teacher and fine-tune as `tdkd/retinaface_mnet075_to_mnet025_synthfaces`, so
the runs are comparable. Imitation on the SSH maps p3/p4/p5 (the student's anchors of each level against the
GT, ψ 0.5), λ 0.01 (METHODS.md §2.5), 3×3 conv + ReLU adapters. The 400-iteration warm-up of the paper is
kept (`distill.fgfi.warmup_iters=0` starts imitating at once).
"""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.fgfi import FGFIConfig


def config():
    cfg = load_config("tdkd/retinaface_mnet075_to_mnet025_synthfaces")
    cfg.name = "fgfi_mnet075_to_mnet025_synthfaces"
    cfg.distill = DistillConfig(teacher=cfg.distill.teacher, methods=["fgfi"], fgfi=FGFIConfig())
    return cfg
