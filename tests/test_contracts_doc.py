"""docs/contracts.md matches the code: every qualified name and file path it lists exists."""
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
    """(module, name) for every `Name(` / `name(` call written in a section headed by a module path."""
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
            if m and m.group(1)[0].isupper():
                out.append((tuple(mods), m.group(1)))
    return sorted(set(out))


@pytest.mark.parametrize("mods,name", section_names())
def test_section_classes_exist(mods, name):
    assert any(hasattr(importlib.import_module(m), name) for m in mods), \
        f"docs/contracts.md: {name} is not in {', '.join(mods)}"
