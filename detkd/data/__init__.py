"""Datasets, augmentation and loaders; importing this package fills the dataset registry."""
from detkd.data import coco, face, synth, synth_ids, synthshapes, voc, widerface  # noqa: F401
