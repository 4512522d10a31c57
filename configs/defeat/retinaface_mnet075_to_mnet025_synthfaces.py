"""DeFeat on SynthFaces (CPU): the TDKD fine-tune schedule with DeFeat's decoupled neck imitation.

Same student initialisation, teacher and fine-tune as `tdkd/retinaface_mnet075_to_mnet025_synthfaces`.
Neck terms on p3/p4/p5 (fg weight 3, bg weight 12, METHODS.md §4.4; with strides 8/16/32 the level rule puts
faces under 112 px on p3); the head term is off as in the released config (`distill.defeat.head=dense` adds
KD on the student's positive / negative anchors).
"""
from detkd.config import load_config
from detkd.distill.defeat import DeFeatConfig
from detkd.distill.distiller import DistillConfig


def config():
    cfg = load_config("tdkd/retinaface_mnet075_to_mnet025_synthfaces")
    cfg.name = "defeat_mnet075_to_mnet025_synthfaces"
    cfg.distill = DistillConfig(teacher=cfg.distill.teacher, methods=["defeat"], defeat=DeFeatConfig())
    return cfg
