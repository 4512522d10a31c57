"""Datasets, augmentation and loaders. ``detkd.registry.load_all()`` imports the modules in ``REGISTERING`` (which
fill the dataset registry); importing this package alone imports nothing, so that torch-free readers such as
``detkd.data.widerface_gt`` start fast."""
REGISTERING = ("coco", "facerec", "synthfaces", "synthids", "synthshapes", "voc", "widerface")
