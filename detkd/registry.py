"""Flat name -> builder tables. Every error for an unknown name lists the close matches."""
from __future__ import annotations

import difflib
import importlib
from dataclasses import fields, is_dataclass
from typing import Any, Callable

MODELS: dict[str, Callable] = {}
DATASETS: dict[str, Callable] = {}
METHODS: dict[str, Callable] = {}  # detection distillation methods (``distill.methods=[...]``)
OBJECTIVES: dict[str, Callable] = {}  # face-recognition training objectives (``distill.method=...``)
EVALUATORS: dict[str, Callable] = {}  # evaluators with the ``detkd.eval.base`` protocol
# model name -> keyword arguments of a tiny CPU instance; tests/test_contract.py builds every registered model
# with them and checks the output contract (docs/contracts.md, "Adding a model family")
TINY_CONFIGS: dict[str, dict[str, Any]] = {}

_TABLES = {"model": MODELS, "dataset": DATASETS, "method": METHODS, "objective": OBJECTIVES,
           "evaluator": EVALUATORS}
# What each kind is, for error messages ("unknown detection method ...").
KIND_NAMES = {"model": "model", "dataset": "dataset", "method": "detection distillation method",
              "objective": "face-recognition objective", "evaluator": "evaluator"}
# Modules whose import fills the tables (kept explicit: no import-time magic elsewhere). A package that lists
# ``REGISTERING`` submodules (detkd.data, detkd.eval: kept light for fast start-up) has those imported too.
_PROVIDERS = ("detkd.models", "detkd.data", "detkd.distill", "detkd.eval")


class UnknownNameError(KeyError):
    """A name that is not registered under the kind asked for (the message says what it is, if anything)."""

    def __str__(self) -> str:  # the message itself, not KeyError's quoted repr
        return str(self.args[0]) if self.args else ""


def register(kind: str, name: str | None = None, tiny: dict[str, Any] | None = None):
    """Decorator: ``@register("model")`` files a builder under its function name (or ``name``).

    ``tiny`` (models): keyword arguments that make a small, fast CPU instance for the contract test.
    """
    table = _TABLES[kind]

    def wrap(fn):
        key = name or fn.__name__
        if key in table and table[key] is not fn:
            raise KeyError(f"{kind} {key!r} is registered twice")
        table[key] = fn
        if tiny is not None:
            TINY_CONFIGS[key] = dict(tiny)
        return fn

    return wrap


def load_all() -> None:
    for mod in _PROVIDERS:
        package = importlib.import_module(mod)
        for sub in getattr(package, "REGISTERING", ()):
            importlib.import_module(f"{mod}.{sub}")


def close_matches(name: str, choices, n: int = 5, cutoff: float = 0.5) -> str:
    """``"; did you mean 'a', 'b'?"`` for the choices close to ``name`` (empty when none is): the one helper
    every "unknown name" error in detkd uses."""
    near = difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=cutoff)
    return f"; did you mean {', '.join(repr(x) for x in near)}?" if near else ""


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def kind_of(name: str) -> list[str]:
    """The kinds under which ``name`` is registered (to say what a misplaced name is)."""
    load_all()
    return [k for k, table in _TABLES.items() if name in table]


def lookup(kind: str, name: str) -> Callable:
    load_all()
    table = _TABLES[kind]
    if name not in table:
        elsewhere = [KIND_NAMES[k] for k in kind_of(name) if k != kind]
        what = f"; {name!r} is {' and '.join(map(_a, elsewhere))}, not {_a(KIND_NAMES[kind])}" if elsewhere else ""
        raise UnknownNameError(
            f"unknown {KIND_NAMES[kind]} {name!r}{what}{close_matches(name, table)} "
            f"(known: {', '.join(sorted(table))})"
        )
    return table[name]


def build(kind: str, cfg: Any, **extra):
    """Build from a config dataclass with a ``name`` field: its other fields are the builder's kwargs."""
    if not is_dataclass(cfg):
        raise TypeError(f"{kind} config must be a dataclass, got {type(cfg).__name__}")
    kwargs = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "name"}
    kwargs.update(extra)
    return lookup(kind, cfg.name)(**kwargs)


def build_model(cfg: Any, **extra):
    return build("model", cfg, **extra)
