"""Distillation: the Distiller, masks, losses and one module per method (fills the method registry)."""
from detkd.distill import facerec_objectives, feat, kd, tdkd  # noqa: F401
