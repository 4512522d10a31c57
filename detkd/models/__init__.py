"""Model families; importing this package fills the model registry."""
from detkd.models import facerec, retinaface  # noqa: F401
