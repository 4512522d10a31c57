"""Datasets, augmentation and loaders; importing this package fills the dataset registry."""
from detkd.data import coco, facerec, synthfaces, synthids, synthshapes, voc, widerface  # noqa: F401
