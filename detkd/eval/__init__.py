"""Evaluators: WIDER FACE, PASCAL VOC, COCO, face verification. Importing this package registers the VOC and
COCO evaluators (``build_evaluator("voc" | "coco", ...)``)."""
from detkd.eval import coco, voc  # noqa: F401
