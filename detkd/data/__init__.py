"""Datasets, augmentation and loaders; importing this package fills the dataset registry."""
from detkd.data import facerec, synthfaces, synthids, widerface  # noqa: F401
