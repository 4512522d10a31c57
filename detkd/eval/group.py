"""Several evaluators fed with the same detections: one inference pass, every metric.

``EvaluatorGroup({"": voc, "coco/": coco})`` forwards ``reset`` / ``process`` to each member and merges their
``evaluate()`` dicts, each member's keys prefixed with its own prefix (``"coco/AP"``). Members that keep
artefacts (``save_plots``) are reached through ``members``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from detkd.eval.base import Evaluator


class EvaluatorGroup(Evaluator):
    def __init__(self, members: Mapping[str, Evaluator]):
        if not members:
            raise ValueError("EvaluatorGroup: give at least one evaluator")
        self.members = dict(members)

    def reset(self) -> None:
        for ev in self.members.values():
            ev.reset()

    def process(self, inputs_meta: Sequence[dict], outputs: Sequence[Any]) -> None:
        for ev in self.members.values():
            ev.process(inputs_meta, outputs)

    def evaluate(self) -> dict:
        merged: dict = {}
        for prefix, ev in self.members.items():
            for k, v in ev.evaluate().items():
                key = f"{prefix}{k}"
                if key in merged:
                    raise ValueError(f"EvaluatorGroup: metric {key!r} given by two evaluators; use prefixes")
                merged[key] = v
        return merged
