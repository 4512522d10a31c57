"""Evaluators (``base.py`` protocol): WIDER FACE, PASCAL VOC, COCO, face verification; importing this package
fills the evaluator registry (``build_evaluator("widerface" | "voc" | "coco", ...)``)."""
from detkd.eval import coco, voc, widerface  # noqa: F401
