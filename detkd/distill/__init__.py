"""Distillation: the Distiller, masks, losses and one module per method (fills the method registry)."""
from detkd.distill import defeat, facerec_objectives, feat, fgfi, kd, ld, tdkd  # noqa: F401
