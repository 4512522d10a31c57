"""Result tables of the benchmarks: one writer for the JSON record and the Markdown table beside it.

``benchmarks/*.py`` build a result dict and a list of Markdown lines, then call ``write_results(dir, stem,
result, lines)``, which writes ``<dir>/<stem>.json`` and ``<dir>/<stem>.md``. The KD-gain tables (TDKD, face
recognition, and the generic / LD ones to come) format their cells with ``mean_std`` (population std over seeds,
in %) and lay them out with ``kd_gain_table``.
"""
from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_commit(cwd: str | Path = REPO_ROOT) -> str:
    """``git rev-parse HEAD`` of the checkout (``"unknown"`` outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def mean_std(values: Iterable[float], scale: float = 100.0, digits: int = 1) -> str:
    """``"mean ± std"`` of ``values`` × ``scale`` (population std, 0 for one value); ``"–"`` when empty."""
    vals = [scale * float(v) for v in values]
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table as lines: header, separator, one line per row (cells formatted with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def kd_gain_table(per_model: Mapping[str, Mapping[str, Sequence[float]]], metrics: Sequence[str],
                  models: Sequence[str] | None = None, first: str = "model", digits: int = 1,
                  titles: Mapping[str, str] | None = None, extra: Mapping[str, Sequence[object]] | None = None,
                  extra_header: Sequence[str] = (), metric_titles: Sequence[str] | None = None) -> list[str]:
    """Rows ``model | mean ± std of each metric`` over seeds (``per_model[model][metric]`` = one value per seed).

    ``models``: row order (default: ``per_model``'s, missing models skipped); ``titles``: row labels;
    ``extra[model]``: more cells after the metrics, under ``extra_header``; ``metric_titles``: column labels
    of the metrics (default: their keys).
    """
    titles = titles or {}
    rows = []
    for m in models or list(per_model):
        if m not in per_model:
            continue
        cells = [mean_std(per_model[m].get(k, ()), digits=digits) for k in metrics]
        rows.append([titles.get(m, m), *cells, *((extra or {}).get(m, ()))])
    return markdown_table([first, *(metric_titles or metrics), *extra_header], rows)


def write_results(out_dir: str | Path, stem: str, result: dict, lines: Sequence[str], indent: int = 2
                  ) -> tuple[Path, Path]:
    """Write ``<out_dir>/<stem>.json`` (``result``) and ``<out_dir>/<stem>.md`` (``lines`` joined, final
    newline); returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    js.write_text(json.dumps(result, indent=indent) + "\n")
    md.write_text("\n".join(lines).rstrip("\n") + "\n")
    return js, md
