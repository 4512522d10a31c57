"""Generic logit KD baseline on SynthFaces: temperature KD on the class logits of the student's positive
and mined negative anchors, same fine-tuning schedule as the TDKD config."""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.kd import KDConfig


def config():
    cfg = load_config("tdkd/retinaface_mnet075_to_mnet025_synthfaces")
    cfg.name = "kd_mnet075_to_mnet025_synthfaces"
    cfg.distill = DistillConfig(teacher=cfg.distill.teacher, methods=["kd"], kd=KDConfig())
    return cfg
