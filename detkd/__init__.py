"""detkd: knowledge distillation for object detectors, face detectors and face recognizers."""
from detkd.config import ExperimentConfig, load_config
from detkd.registry import build_model
from detkd.structures import Assignment, DetOutput, EmbedOutput

__version__ = "0.1.0"
__all__ = ["Assignment", "DetOutput", "EmbedOutput", "ExperimentConfig", "build_model", "load_config"]
