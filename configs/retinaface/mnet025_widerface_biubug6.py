"""RetinaFace-MobileNet0.25 (LeakyReLU 0.1) on WIDER FACE with the biubug6 recipe (METHODS.md §1.8 note).

Batch 32, lr 1e-3, 250 epochs, ×0.1 at 190 and 220; otherwise the same losses. Evaluated at origin size.
"""
from detkd.config import load_config


def config():
    cfg = load_config("retinaface/mnet025_widerface_tdkd")
    cfg.name = "mnet025_widerface_biubug6"
    cfg.model.activation = "leaky0.1"
    cfg.optim.lr = 1e-3
    cfg.sched.milestones = [190, 220]
    cfg.train.epochs = 250
    cfg.eval.protocol = "biubug6-origin"
    return cfg
