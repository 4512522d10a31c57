"""Evaluators (``base.py`` protocol): WIDER FACE, PASCAL VOC, COCO, face verification. ``detkd.registry.load_all()``
imports the modules in ``REGISTERING`` (which fill the evaluator registry: ``build_evaluator("widerface" | "voc" |
"coco", ...)``); importing this package alone imports nothing, so that ``detkd eval widerface`` starts without
torch."""
REGISTERING = ("coco", "voc", "widerface")
