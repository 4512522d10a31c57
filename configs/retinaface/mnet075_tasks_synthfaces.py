"""The TDKD teacher on SynthFaces: MobileNet width 0.75 (channels ×3) with per-task conv blocks.

Same recipe and budget as the student config (30 epochs); only the architecture changes (METHODS.md §1.3).
The demo's shipped teacher (detkd/assets) was trained with exactly this config.
"""
from detkd.config import load_config


def config():
    cfg = load_config("retinaface/mnet025_synthfaces")
    cfg.name = "mnet075_tasks_synthfaces"
    cfg.model.width = 0.75
    cfg.model.task_convs = True
    return cfg
