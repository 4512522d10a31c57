"""The TDKD teacher (width 0.75 + task convs) on WIDER FACE. The paper's teacher recipe is unknown
(METHODS.md §1.11-4); we use the student recipe with the teacher architecture."""
from detkd.config import load_config


def config():
    cfg = load_config("retinaface/mnet025_widerface_tdkd")
    cfg.name = "mnet075_tasks_widerface"
    cfg.model.width = 0.75
    cfg.model.task_convs = True
    return cfg
