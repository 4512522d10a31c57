"""Plots for evaluation and training reports (matplotlib, Agg backend, PNG files).

* ``plot_pr_curves(curves, out_png, title)``: ``curves[name] = (recall [T], precision [T])`` as stored in
  ``WiderFaceEvaluator.curves``; NaN precision points (no box above the threshold) are not drawn.
* ``plot_loss_curves(jsonl_paths, out_png, keys=None)``: JSON-lines metrics files, one object per line such as
  ``{"step": 100, "loss": 1.2, "task.cls": 0.4}``; one panel per key, one line per run.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from detkd.engine.logging import read_jsonl  # noqa: E402


def plot_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], out_png: str | Path,
                   title: str = "") -> Path:
    """Precision-recall curves, one line per entry of ``curves``. Returns the PNG path."""
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=120)
    for name, (rec, prec) in curves.items():
        rec, prec = np.asarray(rec, dtype=float), np.asarray(prec, dtype=float)
        ok = np.isfinite(rec) & np.isfinite(prec)
        ax.plot(rec[ok], prec[ok], label=name, linewidth=1.5)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plot_loss_curves(jsonl_paths: dict[str, str | Path], out_png: str | Path,
                     keys: list[str] | None = None) -> Path:
    """Loss curves against ``step`` (or the line number when a row has no step) for several runs.

    ``keys``: metric names to draw; by default every numeric key found in any file except ``step``,
    ``epoch``, ``lr`` and ``time``-like fields. Returns the PNG path.
    """
    runs = {name: read_jsonl(p) for name, p in jsonl_paths.items()}
    if keys is None:
        skip = {"step", "epoch", "lr", "time", "wall", "iter_time", "data_time"}
        found: dict[str, None] = {}
        for rows in runs.values():
            for row in rows:
                for k, v in row.items():
                    if k not in skip and _is_number(v):
                        found[k] = None
        keys = list(found)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    n = max(len(keys), 1)
    cols = min(n, 3)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), dpi=110, squeeze=False)
    for ax, key in zip(axes.ravel(), keys):
        for name, rows in runs.items():
            pts = [(r.get("step", i), r[key]) for i, r in enumerate(rows) if _is_number(r.get(key))]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, label=name, linewidth=1.2)
        ax.set(title=key, xlabel="step")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
