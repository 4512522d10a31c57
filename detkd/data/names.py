"""Class names of the detection data sets, for model cards and result files (label ``l`` is ``names[l - 1]``)."""
from __future__ import annotations


def dataset_class_names(data_cfg: dict | None) -> tuple[str, ...] | None:
    """The foreground class names a ``data`` config section (as a dict) trains on; ``None`` when unknown."""
    if not data_cfg:
        return None
    name = data_cfg.get("name")
    if name == "synthshapes":
        from detkd.data.synthshapes import SYNTHSHAPES_CLASSES

        return tuple(SYNTHSHAPES_CLASSES)
    if name == "voc":
        from detkd.data.voc_gt import VOC_CLASSES

        return tuple(data_cfg.get("class_names") or VOC_CLASSES)
    return None


def named_class_list(spec: str) -> tuple[str, ...]:
    """``--classes`` values: ``voc``, ``synthshapes`` or a comma list ``a,b,c``."""
    if spec == "voc":
        from detkd.data.voc_gt import VOC_CLASSES

        return tuple(VOC_CLASSES)
    if spec == "synthshapes":
        from detkd.data.synthshapes import SYNTHSHAPES_CLASSES

        return tuple(SYNTHSHAPES_CLASSES)
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    if not names:
        raise ValueError(f"--classes: expected voc, synthshapes or a comma list of names, got {spec!r}")
    return names
