"""Model families; importing this package fills the model registry."""
from detkd.models import face, retinaface  # noqa: F401
