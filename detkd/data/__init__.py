"""Datasets, augmentation and loaders; importing this package fills the dataset registry."""
from detkd.data import face, synth, synth_ids, widerface  # noqa: F401
