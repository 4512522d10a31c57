"""Model families; importing this package fills the model registry."""
from detkd.models import facerec, faster_rcnn, gfl, retinaface, retinanet  # noqa: F401
