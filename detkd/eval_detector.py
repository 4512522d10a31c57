"""``detkd eval detector`` for object detectors: score an exported model on a VOC-layout root or a COCO JSON.

Detections go through one test protocol (``detkd.infer_detector.DET_PROTOCOLS``) once and feed both
evaluators: VOC07 11-point mAP at IoU 0.5 (``voc``) and COCO AP@[.5:.95] (``coco``, faster-coco-eval).

* VOC root: ``Annotations/``, ``ImageSets/Main/<split>.txt``, ``JPEGImages/``; COCO AP is added when the root
  also holds ``annotations/instances_<split>.json`` (SynthShapes writes it) with the images' integer ids.
* COCO JSON + image directory: COCO AP, and VOC07 mAP on the same records (crowd boxes as VOC difficult).

Class names (label ``l`` is ``names[l - 1]``) come from ``--classes`` or the model card; a VOC file naming a
class outside them, or a model whose class count differs from theirs, fails with a one-line error.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn


def model_class_names(card: dict, classes: str | None) -> tuple[str, ...]:
    """Foreground class names: ``classes`` (``voc`` / ``synthshapes`` / ``a,b,c``) or the card's ``class_names``."""
    from detkd.data.names import named_class_list

    if classes:
        return named_class_list(classes)
    names = card.get("class_names") or (card.get("model") or {}).get("class_names")
    if names:
        return tuple(names)
    raise ValueError("the model card has no class_names; give --classes voc|synthshapes|a,b,c")


def check_class_count(model: nn.Module, names, where: str) -> None:
    k = getattr(model, "num_classes", None) or getattr(getattr(model, "config", None), "num_classes", None)
    if k is not None and int(k) != len(names):
        raise ValueError(f"{where}: the model has {k} classes but the data has {len(names)} "
                         f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")


def evaluate_model(model: nn.Module, names, protocol: str, *, voc_root=None, split: str = "test",
                   coco_ann=None, coco_images=None, max_images: int = 0, progress: bool = True) -> dict:
    """``{"voc07_map", "coco_ap"?, "n_images", "per_class"}`` of ``model`` on a VOC root or a COCO JSON
    (exactly one of ``voc_root`` / ``coco_ann``); metrics are fractions."""
    from detkd.data.detection import DetectionEvalSet
    from detkd.eval.base import build_evaluator
    from detkd.eval.group import EvaluatorGroup
    from detkd.experiment import evaluate_detector
    from detkd.infer_detector import get_det_protocol

    get_det_protocol(protocol)  # unknown names fail before any image is read
    if (voc_root is None) == (coco_ann is None):
        raise ValueError("give either a VOC root (--voc-root) or a COCO JSON (--coco-ann), not both")
    if voc_root is not None:
        from detkd.data.voc import read_voc

        where = f"{voc_root} ({split})"
        check_class_count(model, names, where)
        dataset = DetectionEvalSet(read_voc(voc_root, split, tuple(names)), tuple(names))
        ann = Path(voc_root) / "annotations" / f"instances_{split}.json"
        members = {"": build_evaluator("voc", dataset=dataset, max_images=max_images)}
        if ann.is_file():
            members["coco/"] = build_evaluator("coco", ann_file=ann, max_images=max_images)
    else:
        from detkd.data.coco import read_coco

        if coco_images is None:
            raise ValueError("--coco-ann needs --coco-images (the directory holding its file_name images)")
        records, cats = read_coco(coco_ann, coco_images)
        where = str(coco_ann)
        check_class_count(model, cats.names, where)
        dataset = DetectionEvalSet(records, cats.names, ann_file=coco_ann)
        names = cats.names
        members = {"": build_evaluator("voc", dataset=dataset, max_images=max_images),
                   "coco/": build_evaluator("coco", ann_file=coco_ann, max_images=max_images)}
    if len(dataset) == 0:
        raise ValueError(f"{where}: no images to evaluate")
    metrics = evaluate_detector(model, dataset, EvaluatorGroup(members), protocol, max_images=max_images,
                                progress=progress)
    out = {"voc07_map": float(metrics["mAP"]), "n_images": min(len(dataset), max_images or len(dataset)),
           "per_class": {n: float(metrics[f"AP/{n}"]) for n in names if f"AP/{n}" in metrics}}
    if "coco/AP" in metrics:
        out["coco_ap"] = float(metrics["coco/AP"])
        out["coco_ap50"] = float(metrics["coco/AP50"])
    return out
