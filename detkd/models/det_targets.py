"""Detection targets as tensors, checked once with errors that name the image and the offending values.

``gt_tensors(target, index, num_classes, label_base, device)`` -> ``(boxes float32 [G, 4] xyxy, labels int64 [G])``.
Raises ``ValueError`` when boxes and labels differ in count, a label is outside
``label_base .. label_base + num_classes - 1``, or a box has no area (``x2 <= x1`` or ``y2 <= y1``; the data pipeline
drops boxes that collapse when resizing, so one reaching a model is a bug upstream) or is not finite.
"""
from __future__ import annotations

import torch
from torch import Tensor


def gt_tensors(target: dict, index: int, num_classes: int, label_base: int, device) -> tuple[Tensor, Tensor]:
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
    labels = torch.as_tensor(target["labels"], dtype=torch.long, device=device).reshape(-1)
    if labels.numel() != boxes.shape[0]:
        raise ValueError(f"target {index}: {boxes.shape[0]} boxes but {labels.numel()} labels")
    bad = (labels < label_base) | (labels >= label_base + num_classes)
    if bool(bad.any()):
        raise ValueError(f"target {index}: labels {sorted(set(labels[bad].tolist()))} outside "
                         f"{label_base}..{label_base + num_classes - 1} ({num_classes} classes)")
    broken = ~torch.isfinite(boxes).all(1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bool(broken.any()):
        raise ValueError(f"target {index}: boxes without area or not finite (xyxy): {boxes[broken][:3].tolist()}")
    return boxes, labels
