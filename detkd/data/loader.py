"""Batching for detection data sets.

``collate_detection`` stacks equally sized images ``[3, S, S]`` (the data pipeline resizes every training
sample to S x S) into ``float32 [B, 3, S, S]`` and keeps targets and metas as per-image lists, because the
number of GT boxes varies per image. Worker processes need no extra seeding: every random draw of the
augmentation comes from a generator seeded with ``(seed, epoch, index)`` inside the dataset.
"""
from __future__ import annotations

import torch


def collate_detection(batch):
    """``[(image [3,S,S], target, meta), ...]`` -> ``(images float32 [B,3,S,S], list[target], list[meta])``."""
    if not batch:
        raise ValueError("collate_detection: empty batch")
    images, targets, metas = zip(*batch)
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        paths = [m.get("path", "?") for m in metas]
        raise ValueError(f"collate_detection: images of different shapes {sorted(shapes)} in one batch: {paths}")
    stacked = torch.stack([torch.as_tensor(im) for im in images]).float()  # [B, 3, S, S]
    return stacked, list(targets), list(metas)


def worker_init(worker_id: int) -> None:
    """Keep each loader worker to one intra-op thread (OpenCV and torch), so workers do not oversubscribe."""
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
