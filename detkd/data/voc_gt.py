"""PASCAL VOC annotations (VOCdevkit layout), several roots / splits concatenated (VOC07+12 trainval), read
without torch so that ``detkd eval voc`` and ``detkd convert voc2coco`` start fast. Re-exported by
``detkd.data.voc``, which builds the training / evaluation sets on these records.

Layout::

    ROOT/Annotations/<id>.xml
    ROOT/JPEGImages/<id>.jpg
    ROOT/ImageSets/Main/<split>.txt        one image id per line

Pixel convention. VOC XML boxes are **1-based, inclusive** integer pixel indices: ``xmin=1`` is the first
column and ``xmax`` the last covered column. detkd boxes are continuous (see :mod:`detkd.data.detection`), so

    detkd  x1 = xmin - 1,  y1 = ymin - 1,  x2 = xmax,  y2 = ymax         (reading)
    VOC    xmin = x1 + 1,  ymin = y1 + 1,  xmax = x2,  ymax = y2         (writing results, ``to_voc_pixels``)

A box written as a VOC result is therefore exactly the box that was read, its width ``x2 - x1`` is the
devkit's ``xmax - xmin + 1``, and the evaluator's "+1" IoU on VOC pixels equals the plain IoU on detkd boxes.

``difficult`` and ``truncated`` are kept per object. By default difficult objects do not train (they become
``ignore_boxes``), as in py-faster-rcnn and mmdet; ``train_difficult=True`` trains on them.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from detkd.data.det_record import DetRecord

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


@dataclass
class VOCObject:
    """One ``<object>``: ``box`` in VOC pixels (1-based inclusive ``xmin, ymin, xmax, ymax``)."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool
    truncated: bool


def _text(node, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{where}: missing <{tag}>")
    return child.text.strip()


def _number(node, tag: str, where: str) -> float:
    text = _text(node, tag, where)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{where}: <{tag}> is not a number: {text!r}") from None


def _flag(node, tag: str) -> bool:
    child = node.find(tag)
    return child is not None and child.text is not None and child.text.strip() not in ("", "0")


def parse_voc_xml(path: str | Path, class_names: Sequence[str] = VOC_CLASSES) -> tuple[int, int, list[VOCObject]]:
    """``(width, height, objects)`` of one annotation file. Raises ``ValueError`` naming the file and the
    object (1-based, with its source line when the parser knows it) for a missing ``<bndbox>``, a class
    outside ``class_names``, a non-numeric or inverted box; ``FileNotFoundError`` when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: not valid XML ({e})") from None
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: missing <size>")
    width, height = int(_number(size, "width", str(path))), int(_number(size, "height", str(path)))
    known = set(class_names)
    objects = []
    for k, obj in enumerate(root.iter("object"), 1):
        where = f"{path}: object {k}"
        name = _text(obj, "name", where)
        if name not in known:
            raise ValueError(f"{where}: class {name!r} is not in the class list ({', '.join(class_names)})")
        bb = obj.find("bndbox")
        if bb is None:
            raise ValueError(f"{where} ({name}): no <bndbox>")
        box = tuple(_number(bb, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"{where} ({name}): inverted box xmin,ymin,xmax,ymax = {box}")
        objects.append(VOCObject(name, box, _flag(obj, "difficult"), _flag(obj, "truncated")))
    return width, height, objects


def read_image_set(root: str | Path, split: str) -> list[str]:
    """The ids of ``ROOT/ImageSets/Main/<split>.txt`` (first token of each non-empty line)."""
    path = Path(root) / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"image set not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def to_detkd_boxes(voc_boxes: np.ndarray) -> np.ndarray:
    """VOC 1-based inclusive ``[n,4]`` -> detkd continuous xyxy (``x1 = xmin - 1``, ``x2 = xmax``)."""
    out = np.asarray(voc_boxes, np.float64).reshape(-1, 4).copy()
    out[:, :2] -= 1
    return out


def to_voc_pixels(boxes: np.ndarray) -> np.ndarray:
    """detkd continuous xyxy ``[n,4]`` -> VOC 1-based inclusive (``xmin = x1 + 1``, ``xmax = x2``)."""
    out = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    out[:, :2] += 1
    return out


def read_voc(roots: str | Path | Sequence[str | Path], splits: str | Sequence[str],
             class_names: Sequence[str] = VOC_CLASSES, check_images: bool = True) -> list[DetRecord]:
    """Records of every ``(root, split)`` pair, in file order (``roots`` and ``splits`` are paired one to one,
    or one split is applied to every root). Labels are ``1 + index in class_names``. An id listed in an image
    set whose annotation (or, with ``check_images``, image) is missing raises an error naming the list file and
    line. Evaluation needs no images: it passes ``check_images=False``."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    splits = [splits] if isinstance(splits, str) else list(splits)
    if len(splits) == 1:
        splits = splits * len(roots)
    if len(splits) != len(roots):
        raise ValueError(f"read_voc: {len(roots)} roots but {len(splits)} splits (pair them or give one split)")
    index = {c: i + 1 for i, c in enumerate(class_names)}
    records = []
    for root, split in zip(map(Path, roots), splits):
        list_file = root / "ImageSets" / "Main" / f"{split}.txt"
        for lineno, image_id in enumerate(read_image_set(root, split), 1):
            xml, jpg = root / "Annotations" / f"{image_id}.xml", root / "JPEGImages" / f"{image_id}.jpg"
            for p in (xml, jpg) if check_images else (xml,):
                if not p.is_file():
                    raise FileNotFoundError(f"{list_file}:{lineno}: id {image_id!r} is listed but {p} is missing")
            width, height, objs = parse_voc_xml(xml, class_names)
            records.append(DetRecord(
                image_id=image_id, path=jpg, width=width, height=height,
                boxes=to_detkd_boxes(np.array([o.box for o in objs], np.float64)),
                labels=[index[o.name] for o in objs], difficult=[o.difficult for o in objs],
                crowd=np.zeros(len(objs), bool), truncated=[o.truncated for o in objs]))
    return records
