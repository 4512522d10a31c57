"""docs/contracts.md names things that exist: every dotted ``detkd.*`` name resolves, every path exists, and
the names each "(detkd/<module>.py)" section lists in ``name(`` form are attributes of that module."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "contracts.md").read_text()


def resolve(dotted: str):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("name", sorted(set(re.findall(r"`(detkd(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`", DOC))))
def test_dotted_names_resolve(name):
    resolve(name)


@pytest.mark.parametrize("path", sorted(set(re.findall(r"[`(]((?:detkd|tests|docs)/[A-Za-z0-9_./]*[A-Za-z0-9_])[`)]",
                                                        DOC))))
def test_paths_exist(path):
    assert (ROOT / path).exists(), path


def _module_sections():
    for m in re.finditer(r"^## [^\n]*\((detkd/[a-z_/]+)\.py\)\n(.*?)(?=^## |\Z)", DOC, re.M | re.S):
        module = m.group(1).replace("/", ".")
        for name in sorted(set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)\(", m.group(2)))):
            yield module, name


# calls on instances / builtins that these sections show in ``name(`` form but that are not module attributes
NOT_ATTRIBUTES = {"model", "nn", "teacher", "task", "len"}


def defined(mod, name: str) -> bool:
    """``name`` is in the module, a method of one of its classes, or a registry function (``build_model``)."""
    registry = importlib.import_module("detkd.registry")
    classes = [v for v in vars(mod).values() if isinstance(v, type) and v.__module__ == mod.__name__]
    return hasattr(mod, name) or any(hasattr(c, name) for c in classes) or hasattr(registry, name)


@pytest.mark.parametrize("module, name", list(_module_sections()))
def test_section_names_exist_in_their_module(module, name):
    mod = importlib.import_module(module)
    if name in NOT_ATTRIBUTES and not defined(mod, name):
        pytest.skip(f"{name} is an instance call")
    assert defined(mod, name), f"docs/contracts.md lists {name}( under {module}, which has no such name"
