"""Batching for detection data sets.

``collate_detection`` pads the images of a batch to one size, bottom/right, with the smallest height and
width that hold every image and are multiples of ``size_divisor`` (32 by default, as mmdet-style recipes
need; 1 = no rounding), and stacks them into ``float32 [B, 3, H, W]``. Targets and metas stay per-image lists
(the number of GT boxes varies); every meta gains ``"image_size": (h, w)``, the valid area of its image in
the padded batch, which the tasks pass to the models as ``image_sizes`` (``batch_image_sizes``). Worker
processes need no extra seeding: every random draw of the augmentation comes from a generator seeded with
``(seed, epoch, index)`` inside the dataset.
"""
from __future__ import annotations

import math
from functools import partial

import torch


def collate_detection(batch, size_divisor: int = 32, pad_value: float = 0.0):
    """``[(image [3,h,w], target, meta), ...]`` -> ``(images float32 [B,3,H,W], list[target], list[meta])``.

    ``H = ceil(max h / size_divisor) * size_divisor`` (same for W); pixels outside an image are
    ``pad_value`` (RGB 0..255 space, before the model's normalisation). Metas are copied, with
    ``"image_size": (h, w)`` added.
    """
    if not batch:
        raise ValueError("collate_detection: empty batch")
    if size_divisor < 1:
        raise ValueError(f"collate_detection: size_divisor must be >= 1, got {size_divisor}")
    images, targets, metas = zip(*batch)
    images = [torch.as_tensor(im) for im in images]
    for im, meta in zip(images, metas):
        if im.ndim != 3 or im.shape[0] != 3:
            raise ValueError(f"collate_detection: image {meta.get('path', '?')} has shape {tuple(im.shape)}, "
                             "expected [3, H, W]")
    h = math.ceil(max(im.shape[1] for im in images) / size_divisor) * size_divisor
    w = math.ceil(max(im.shape[2] for im in images) / size_divisor) * size_divisor
    if all(tuple(im.shape[1:]) == (h, w) for im in images):
        stacked = torch.stack(images).float()  # [B, 3, H, W], nothing to pad
    else:
        stacked = torch.full((len(images), 3, h, w), float(pad_value), dtype=torch.float32)
        for i, im in enumerate(images):
            stacked[i, :, : im.shape[1], : im.shape[2]] = im
    metas = [{**m, "image_size": (int(im.shape[1]), int(im.shape[2]))} for m, im in zip(metas, images)]
    return stacked, list(targets), metas


def detection_collate(size_divisor: int = 32, pad_value: float = 0.0):
    """``collate_detection`` with a fixed ``size_divisor`` / ``pad_value`` (picklable, for DataLoader workers)."""
    return partial(collate_detection, size_divisor=int(size_divisor), pad_value=float(pad_value))


def batch_image_sizes(batch) -> list[tuple[int, int]] | None:
    """The ``image_size`` of every meta of a ``(images, targets, metas)`` batch, or ``None`` when absent."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 3 or not batch[2]:
        return None
    metas = batch[2]
    if not all(isinstance(m, dict) and "image_size" in m for m in metas):
        return None
    return [tuple(m["image_size"]) for m in metas]


def worker_init(worker_id: int) -> None:
    """Keep each loader worker to one intra-op thread (OpenCV and torch), so workers do not oversubscribe."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
