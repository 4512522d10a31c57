"""Model families; importing this package fills the model registry."""
from detkd.models import face, gfl, retinaface, retinanet  # noqa: F401
