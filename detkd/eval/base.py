"""The evaluator protocol and the one batched inference driver every evaluation goes through.

An **evaluator** accumulates a model's outputs over a data set and turns them into metrics:

* ``reset()`` forgets everything processed so far;
* ``process(inputs_meta, outputs)`` records one batch: ``inputs_meta`` is the list of per-image meta dicts the
  data set gave (each holds an ``"image_id"`` the evaluator uses to find the ground truth), ``outputs`` the
  list of per-image predictions in the same order. Detection predictions are dicts with ``boxes`` float
  ``[N, 4]`` xyxy in original-image pixels, ``scores`` ``[N]``, ``labels`` int64 ``[N]`` (and optionally
  ``landmarks [N, 5, 2]``), tensors or numpy arrays;
* ``evaluate() -> dict`` gathers what every rank processed to rank 0 (``detkd.engine.dist.gather_objects``) and
  returns the metrics there; other ranks get ``{}``. All ranks must call it (it is a collective under DDP).

``DatasetEvaluator`` implements the gathering for evaluators that keep one picklable record per image.
Evaluators are registered by name (``@register("evaluator")``) and built with ``build_evaluator(name, **kw)``.

``inference_on_dataset(model, loader, evaluator, predict)`` runs ``predict(model, batch)`` over a
``DataLoader`` (batched, worker processes for decoding, progress bar on rank 0) under ``torch.no_grad`` with
the model in eval mode (its previous mode restored afterwards), feeds the evaluator and returns
``evaluator.evaluate()``. Under DDP give each rank a disjoint shard (``DistributedSampler(shuffle=False)`` or
``shard_indices``); the evaluator merges them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used, so that the file evaluators start without it
    from torch import nn

__all__ = ["Evaluator", "DatasetEvaluator", "inference_on_dataset", "build_evaluator", "shard_indices"]


class Evaluator(ABC):
    """``reset / process / evaluate`` over a data set (see the module docstring for the argument conventions)."""

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def process(self, inputs_meta: Sequence[dict], outputs: Sequence[Any]) -> None: ...

    @abstractmethod
    def evaluate(self) -> dict: ...


class DatasetEvaluator(Evaluator):
    """An evaluator that keeps one record per processed image (``self._records``, any picklable values) and
    computes its metrics from all ranks' records on rank 0.

    Subclasses implement ``record(meta, output) -> Any`` (validate and convert one image's prediction; return
    ``None`` to skip the image) and ``compute(records) -> dict`` (the metrics from every rank's records,
    concatenated in rank order).
    """

    def __init__(self) -> None:
        self._records: list = []

    def reset(self) -> None:
        self._records = []

    def process(self, inputs_meta: Sequence[dict], outputs: Sequence[Any]) -> None:
        if len(inputs_meta) != len(outputs):
            raise ValueError(f"{type(self).__name__}.process: {len(inputs_meta)} metas but {len(outputs)} outputs")
        for meta, out in zip(inputs_meta, outputs):
            rec = self.record(meta, out)
            if rec is not None:
                self._records.append(rec)

    def gathered(self) -> list | None:
        """Every rank's records in rank order on rank 0, ``None`` on the other ranks (a collective)."""
        import sys

        if "torch" not in sys.modules:  # torch never imported: a single process, nothing to gather
            return list(self._records)
        from detkd.engine import dist

        parts = dist.gather_objects(self._records)
        return None if parts is None else [r for part in parts for r in part]

    def evaluate(self) -> dict:
        records = self.gathered()
        return {} if records is None else self.compute(records)

    @abstractmethod
    def record(self, meta: dict, output: Any) -> Any: ...

    @abstractmethod
    def compute(self, records: list) -> dict: ...


def shard_indices(n: int) -> range:
    """This rank's share of ``range(n)`` (strided, so that every rank gets about n / world images)."""
    from detkd.engine import dist

    return range(dist.rank(), n, dist.world_size())


def inference_on_dataset(
    model: nn.Module,
    loader: Iterable,
    evaluator: Evaluator,
    predict: Callable[[nn.Module, Any], tuple[Sequence[dict], Sequence[Any]]],
    *,
    progress: bool = True,
    desc: str = "eval",
) -> dict:
    """Run ``predict(model, batch) -> (metas, outputs)`` over every batch of ``loader`` and evaluate.

    The model is put in eval mode under ``torch.no_grad`` and its training flag restored afterwards (also on
    error). Returns ``evaluator.evaluate()``: the metrics on rank 0, ``{}`` on other ranks.
    """
    import torch

    from detkd.engine import dist
    from detkd.engine.logging import progress as bar

    evaluator.reset()
    was_training = model.training
    model.eval()
    try:
        total = len(loader) if hasattr(loader, "__len__") else None
        with torch.no_grad():
            for batch in bar(loader, total=total, enabled=progress and dist.is_main(), desc=desc):
                metas, outputs = predict(model, batch)
                evaluator.process(metas, outputs)
    finally:
        model.train(was_training)
    return evaluator.evaluate()


def build_evaluator(name: str, **kwargs) -> Evaluator:
    """The evaluator registered under ``name`` (``@register("evaluator")``), built with ``kwargs``."""
    from detkd.registry import lookup

    return lookup("evaluator", name)(**kwargs)
