"""Distillation: the Distiller, masks, losses and one module per method (fills the method registry)."""
from detkd.distill import face, feat, kd, tdkd  # noqa: F401
