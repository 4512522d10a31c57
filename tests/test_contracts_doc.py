"""docs/contracts.md matches the code: every qualified ``detkd.*`` name and every file path it lists exists, and
the names each "(detkd/<module>.py, ...)" section shows in ``name(`` form are in one of those modules."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "contracts.md"
TEXT = DOC.read_text()
CODE = re.findall(r"`([^`]+)`", TEXT)
QUALIFIED = sorted({m for c in CODE for m in re.findall(r"\b(detkd(?:\.[A-Za-z_]\w*)+)(?![\w/])", c)})
PATHS = sorted({m for m in re.findall(r"\b((?:detkd|configs|benchmarks|tests)/[\w/]+\.py)\b", TEXT)})


def resolve(dotted: str):
    """Import the longest module prefix of ``dotted`` and getattr the rest."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_doc_lists_names():
    assert len(QUALIFIED) > 30 and len(PATHS) > 10


@pytest.mark.parametrize("name", QUALIFIED)
def test_qualified_name_exists(name):
    try:
        resolve(name)
    except (ModuleNotFoundError, AttributeError) as e:
        pytest.fail(f"docs/contracts.md names `{name}`, which does not exist ({e})")


@pytest.mark.parametrize("path", PATHS)
def test_path_exists(path):
    assert (ROOT / path).is_file(), f"docs/contracts.md names {path}, which does not exist"


def section_names():
    """(modules, name) for every ``name(`` call written in a section headed by module paths."""
    out = []
    for block in re.split(r"^## ", TEXT, flags=re.M)[1:]:
        header = block.splitlines()[0]
        mods, folder = [], ""
        for p in re.findall(r"([\w/]+\.py)", header):  # "detkd/eval/voc.py, coco.py": coco.py is in eval/ too
            folder = p.rpartition("/")[0] if "/" in p else folder
            if folder.startswith("detkd"):
                mods.append(f"{folder}/{p.rpartition('/')[2]}".removesuffix(".py").replace("/", "."))
        if not mods:
            continue
        for code in re.findall(r"`([^`]+)`", block):
            m = re.match(r"([A-Za-z_]\w*)\(", code)
            if m:
                out.append((tuple(mods), m.group(1)))
    return sorted(set(out))


# calls on instances / builtins that the sections show in ``name(`` form but that are not module attributes
NOT_ATTRIBUTES = {"model", "nn", "teacher", "task", "len", "ceil"}


def defined(mod, name: str) -> bool:
    """``name`` is in the module, a method of one of its classes, or a registry function (``build_model``)."""
    registry = importlib.import_module("detkd.registry")
    classes = [v for v in vars(mod).values() if isinstance(v, type) and v.__module__ == mod.__name__]
    return hasattr(mod, name) or any(hasattr(c, name) for c in classes) or hasattr(registry, name)


@pytest.mark.parametrize("mods,name", section_names())
def test_section_names_exist_in_their_modules(mods, name):
    found = any(defined(importlib.import_module(m), name) for m in mods)
    if not found and name in NOT_ATTRIBUTES:
        pytest.skip(f"{name} is an instance call")
    assert found, f"docs/contracts.md: {name}( is not in {', '.join(mods)}"
