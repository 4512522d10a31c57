"""Evaluators (``base.py`` protocol): WIDER FACE, face verification; importing this package fills the
evaluator registry."""
from detkd.eval import widerface  # noqa: F401
