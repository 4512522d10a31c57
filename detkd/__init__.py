"""detkd: knowledge distillation for object detectors, face detectors and face recognizers.

The names below are imported on first use, so that ``import detkd`` (and ``detkd --help``, ``detkd list`` and the
torch-free evaluators) do not import torch.
"""
from importlib import import_module

__version__ = "0.1.0"
__all__ = ["Assignment", "DetOutput", "EmbedOutput", "ExperimentConfig", "build_model", "load_config"]
_LAZY = {"ExperimentConfig": "detkd.config", "load_config": "detkd.config", "build_model": "detkd.registry",
         "Assignment": "detkd.structures", "DetOutput": "detkd.structures", "EmbedOutput": "detkd.structures"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detkd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
