"""Generic FitNets-style baseline on SynthFaces: L2 between adapted student SSH maps and the teacher's
SSH maps (no masks), same fine-tuning schedule as the TDKD config, so the two are comparable."""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.feat import FeatConfig


def config():
    cfg = load_config("tdkd/retinaface_mnet075_to_mnet025_synthfaces")
    cfg.name = "feat_mnet075_to_mnet025_synthfaces"
    cfg.distill = DistillConfig(teacher=cfg.distill.teacher, methods=["feat"], feat=FeatConfig(weight=1.0))
    return cfg
