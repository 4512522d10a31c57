"""Model families; importing this package fills the model registry."""
from detkd.models import face, faster_rcnn, retinaface  # noqa: F401
