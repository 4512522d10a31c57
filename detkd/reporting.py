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


# ------------------------------------------------------------------------------- paired seed comparisons


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (``n − 1`` in the denominator); ``nan`` for fewer than 2 values."""
    vals = [float(v) for v in values]
    if len(vals) < 2:
        return float("nan")
    mean = sum(vals) / len(vals)
    return math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def paired_gain(control: Sequence[float], distilled: Sequence[float]) -> dict:
    """The project's rule for "did distillation help?" on paired seeds (``control[i]`` and ``distilled[i]`` share
    seed ``i``): the per-seed differences ``d = distilled − control``, their mean and SAMPLE std, and

    - ``"gain"``  when ``mean(d) > 2·std(d)`` and every seed gains (``d_i > 0``);
    - ``"loss"``  when ``mean(d) < −2·std(d)`` and every seed loses;
    - ``"no clear difference"`` otherwise; ``"too few seeds"`` with fewer than 2 pairs.

    Returns ``{"diffs", "mean", "std", "two_sigma", "verdict", "every_seed_gains"}``.
    """
    if len(control) != len(distilled):
        raise ValueError(f"paired_gain: {len(control)} control values but {len(distilled)} distilled ones")
    diffs = [float(d) - float(c) for c, d in zip(control, distilled)]
    mean = sum(diffs) / len(diffs) if diffs else float("nan")
    std = sample_std(diffs)
    if len(diffs) < 2:
        verdict = "too few seeds"
    elif mean > 2 * std and all(d > 0 for d in diffs):
        verdict = "gain"
    elif mean < -2 * std and all(d < 0 for d in diffs):
        verdict = "loss"
    else:
        verdict = "no clear difference"
    return {"diffs": diffs, "mean": mean, "std": std, "two_sigma": 2 * std, "verdict": verdict,
            "every_seed_gains": bool(diffs) and all(d > 0 for d in diffs)}


def verdict_words(p: dict, unit: str = "") -> str:
    """One sentence for a ``paired_gain`` result."""
    n = len(p["diffs"])
    if p["verdict"] == "too few seeds":
        return f"{n} paired seed: no verdict (the rule needs at least 2 seeds)"
    head = f"paired gain {p['mean']:+.2f}{unit}, 2σ = {p['two_sigma']:.2f}{unit} over {n} seeds"
    if p["verdict"] == "gain":
        return f"{head}: distillation helped (the mean gain is above 2σ and every seed gains)"
    if p["verdict"] == "loss":
        return f"{head}: distillation hurt (the mean loss is beyond 2σ and every seed loses)"
    why = [] if abs(p["mean"]) > p["two_sigma"] else ["the mean is within 2σ"]
    gains = sum(d > 0 for d in p["diffs"])
    if p["mean"] > 0 and gains < n:
        why.append(f"only {gains} of {n} seeds gain")
    return f"{head}: no clear difference ({'; '.join(why) or 'mixed signs'})"
