"""``detkd compare``: did distillation help? Paired seeds of control vs distilled runs, and a diagnosis.

Inputs (any mix, several seeds):

- a run directory (``summary.json`` + ``config.json`` + ``metrics.jsonl``, as ``detkd train`` writes them): its
  name is ``config.json``'s ``name`` (else the summary's, else the folder's), its seed ``train.seed``, its
  numbers the summary's ``eval`` dict; a run with ``distill.methods`` is a distilled run;
- a folder holding run directories at any depth (every ``summary.json`` below it);
- a benchmark JSON with ``{"models": {name: {metric: [one value per seed]}}, "seeds": [...]}`` (the KD-gain
  tables, e.g. ``benchmarks/results/tdkd_synthfaces.json``), or in the flat KD-gain shape of
  ``kd_gain_<method>_<detector>.json`` / ``kd_gain_ld.json``: ``{"metric": m, "seeds": [...], <model>: [one value
  per seed], <other metric>: {<model>: [...]}}`` (a ``"distilled"`` model is named after the file's ``"method"``).

Roles: the control is ``--control`` or the first present of ``control``, ``baseline_extra``, ``baseline``; the
teacher is a model named ``teacher``; every other model except ``baseline*`` is compared against the control on
the seeds both have (``reporting.paired_gain``: the mean of per-seed differences above twice their sample std and
every seed gaining is a gain).

``diagnose`` reads each distilled run's ``metrics.jsonl``: per ``kd.*`` term, the ratio of its value to the task
loss (sum of the ``task.*`` terms) at the first, middle and last logged step, flagged when it stays above 1000×
or below 0.001× (the commonest reason a distillation does nothing), or is 0 on every step; and whether the
teacher beats the students on each val metric.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from detkd.engine.logging import read_metrics
from detkd.errors import UserError
from detkd.reporting import paired_gain, sample_std, verdict_words

CONTROL_NAMES = ("control", "baseline_extra", "baseline")
TEACHER_NAME = "teacher"
RATIO_HIGH, RATIO_LOW = 1000.0, 0.001


@dataclass
class Results:
    """``models[name][metric][seed] = value``; ``logs[name][seed]`` = that run's ``metrics.jsonl``;
    ``distilled`` = names of runs that distil."""

    models: dict[str, dict[str, dict[object, float]]] = field(default_factory=dict)
    logs: dict[str, dict[object, Path]] = field(default_factory=dict)
    distilled: set[str] = field(default_factory=set)
    sources: list[str] = field(default_factory=list)

    def add(self, name: str, seed: object, metrics: dict, where: str) -> None:
        slot = self.models.setdefault(name, {})
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            seeds = slot.setdefault(key, {})
            if seed in seeds:
                raise UserError(f"{where}: {name!r} seed {seed} appears twice (metric {key!r})")
            seeds[seed] = float(value)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _add_run(res: Results, run: Path) -> None:
    summary = _read_json(run / "summary.json")
    config = _read_json(run / "config.json") if (run / "config.json").is_file() else {}
    name = config.get("name") or summary.get("name") or run.name
    seed = (config.get("train") or {}).get("seed", 0)
    ev = summary.get("eval")
    if not isinstance(ev, dict):
        raise UserError(f"{run / 'summary.json'}: key 'eval' is missing or not an object")
    res.add(name, seed, ev, str(run))
    if (config.get("distill") or {}).get("methods"):
        res.distilled.add(name)
    if (run / "metrics.jsonl").is_file():
        res.logs.setdefault(name, {})[seed] = run / "metrics.jsonl"
    res.sources.append(str(run))


def _add_benchmark(res: Results, path: Path, data: dict) -> None:
    models = data["models"]
    if not isinstance(models, dict):
        raise UserError(f"{path}: key 'models' must map model names to {{metric: [values per seed]}}")
    seeds_all = data.get("seeds")
    for name, metrics in models.items():
        if not isinstance(metrics, dict):
            raise UserError(f"{path}: models.{name} must map metrics to lists of per-seed values")
        for key, values in metrics.items():
            if not isinstance(values, list):
                raise UserError(f"{path}: models.{name}.{key} must be a list (one value per seed)")
            seeds = seeds_all if isinstance(seeds_all, list) and len(seeds_all) == len(values) else range(len(values))
            for seed, v in zip(seeds, values):
                res.add(name, seed, {key: v}, f"{path}: models.{name}.{key}")
        if name not in CONTROL_NAMES and name != TEACHER_NAME and not name.startswith("baseline"):
            res.distilled.add(name)
    res.sources.append(str(path))


def _per_seed(v, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) for x in v)


def flat_benchmark_models(data: dict) -> dict | None:
    """The ``models`` mapping of a benchmark JSON in the flat KD-gain shape (see the module docstring), or None
    for any other shape. Lists of one number per seed at the top level are the headline ``metric``; a dict of
    such lists under another key is that metric for the models it names."""
    metric, seeds = data.get("metric"), data.get("seeds")
    if "models" in data or not isinstance(metric, str) or not isinstance(seeds, list) or not seeds:
        return None
    n = len(seeds)
    rename = {"distilled": data["method"]} if isinstance(data.get("method"), str) else {}
    models = {rename.get(k, k): {metric: v} for k, v in data.items() if k != "seeds" and _per_seed(v, n)}
    for key, v in data.items():
        if key != metric and isinstance(v, dict):
            for name, xs in v.items():
                if rename.get(name, name) in models and _per_seed(xs, n):
                    models[rename.get(name, name)][key] = xs
    return models or None


def load_results(paths: list[str | Path]) -> Results:
    """Read run directories, folders of runs and benchmark JSON files into one ``Results``."""
    res = Results()
    for p in map(Path, paths):
        if p.is_file():
            data = _read_json(p)
            flat = flat_benchmark_models(data)
            if flat is not None:
                _add_benchmark(res, p, {**data, "models": flat})
            elif "models" in data:
                _add_benchmark(res, p, data)
            elif "eval" in data:  # a summary.json given directly
                _add_run(res, p.parent)
            else:
                raise UserError(f"{p}: neither a benchmark JSON (key 'models') nor a run's summary.json (key 'eval')")
        elif p.is_dir():
            runs = [p] if (p / "summary.json").is_file() else sorted(s.parent for s in p.rglob("summary.json"))
            if not runs:
                raise UserError(f"{p}: no summary.json in this folder or below it (is it a run directory?)")
            for run in runs:
                _add_run(res, run)
        else:
            raise FileNotFoundError(f"{p}: no such run directory or results file")
    return res


def pick_control(res: Results, control: str | None) -> str:
    if control:
        if control not in res.models:
            raise UserError(f"--control {control!r} is not among the results (have: {', '.join(sorted(res.models))})")
        return control
    for name in CONTROL_NAMES:
        if name in res.models:
            return name
    raise UserError(f"no control run among {sorted(res.models)}: name one with --control (looked for "
                   f"{', '.join(CONTROL_NAMES)})")


def compare(res: Results, control: str | None = None, metrics: list[str] | None = None,
            distilled: list[str] | None = None) -> dict:
    """Paired comparisons of every distilled model against the control, per metric.

    Returns ``{"control", "metrics", "rows": [{model, metric, seeds, control, distilled, mean_control,
    std_control, mean_distilled, std_distilled, diffs, mean, std, two_sigma, verdict, words}]}``; values are
    as stored (AP in [0, 1]; ``scale`` says the factor the table prints them with).
    """
    ctl = pick_control(res, control)
    names = distilled or sorted(n for n in res.models if n in res.distilled and n != ctl)
    if not names:
        raise UserError(f"no distilled runs to compare with {ctl!r} (have: {', '.join(sorted(res.models))})")
    for n in names:
        if n not in res.models:
            raise UserError(f"{n!r} is not among the results (have: {', '.join(sorted(res.models))})")
    common = [k for k in res.models[ctl] if all(k in res.models[n] for n in names)]
    keys = metrics or common
    if not keys:
        raise UserError(f"{ctl!r} and {', '.join(map(repr, names))} share no val metric (empty 'eval' in "
                         "summary.json? was the run evaluated?)")
    for k in keys:
        if k not in common:
            raise UserError(f"metric {k!r} is not reported by {ctl!r} and every compared model "
                            f"(have: {', '.join(common)})")
    scale = 100.0 if all(0.0 <= v <= 1.0 for k in keys for v in res.models[ctl][k].values()) else 1.0
    rows = []
    for n in names:
        for k in keys:
            c_vals, d_vals = res.models[ctl][k], res.models[n][k]
            seeds = [s for s in c_vals if s in d_vals]
            c = [scale * c_vals[s] for s in seeds]
            d = [scale * d_vals[s] for s in seeds]
            p = paired_gain(c, d)
            rows.append({
                "model": n, "metric": k, "seeds": seeds, "control": c, "distilled": d,
                "mean_control": _mean(c), "std_control": sample_std(c),
                "mean_distilled": _mean(d), "std_distilled": sample_std(d),
                **p, "words": verdict_words(p),
            })
    return {"control": ctl, "metrics": keys, "scale": scale, "rows": rows}


def json_safe(obj):
    """``obj`` with NaN/inf floats as ``None`` (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _mean(v: list[float]) -> float:
    return sum(v) / len(v) if v else float("nan")


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def format_compare(result: dict) -> str:
    """The paired table as text: per model and metric, one line per seed, mean ± sample std, the verdict."""
    unit = " (×100)" if result["scale"] == 100.0 else ""
    out = []
    for r in result["rows"]:
        out.append(f"{r['model']} vs {result['control']} on {r['metric']}{unit}")
        out.append(f"  {'seed':>8}  {'control':>14}  {'distilled':>14}  {'gain':>8}")
        for s, c, d, g in zip(r["seeds"], r["control"], r["distilled"], r["diffs"]):
            out.append(f"  {str(s):>8}  {c:>14.2f}  {d:>14.2f}  {g:>+8.2f}")
        std = r["std"]
        out.append(f"  {'mean±std':>8}  {_pm(r['mean_control'], r['std_control']):>14}  "
                   f"{_pm(r['mean_distilled'], r['std_distilled']):>14}  {r['mean']:>+8.2f}"
                   + ("" if math.isnan(std) else f" ± {std:.2f}"))
        out.append(f"  verdict: {r['words']}")
        out.append("")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------- diagnose


def term_scales(metrics_jsonl: Path) -> dict[str, dict]:
    """Per ``kd.*`` term of one run: ``{"first", "middle", "last", "median"}`` ratios to the task loss (the sum of
    the ``task.*`` terms of the same logged step) and ``"flag"`` (``None``, ``"too large"``, ``"too small"``,
    ``"always zero"``). Steps with a zero task loss are skipped; a flag needs the median ratio out of range."""
    try:
        rows = read_metrics(metrics_jsonl, "train")
    except ValueError as e:  # a bad line: read_jsonl names the file and line
        raise UserError(str(e), path=metrics_jsonl) from None
    if not rows:
        raise UserError(f"{metrics_jsonl}: no training rows (kind 'train')")
    terms = sorted({k for r in rows for k in r if k.startswith("kd.")})
    out = {}
    for term in terms:
        ratios, values = [], []
        for r in rows:
            task = sum(float(v) for k, v in r.items() if k.startswith("task.") and isinstance(v, (int, float)))
            v = r.get(term)
            if not isinstance(v, (int, float)) or task <= 0:
                continue
            values.append(float(v))
            ratios.append(float(v) / task)
        if not ratios:
            continue
        nonzero = sorted(x for x in ratios if x != 0.0)
        median = nonzero[len(nonzero) // 2] if nonzero else 0.0
        flag = None
        if not nonzero:
            flag = "always zero"
        elif median > RATIO_HIGH:
            flag = "too large"
        elif median < RATIO_LOW:
            flag = "too small"
        out[term] = {"first": ratios[0], "middle": ratios[len(ratios) // 2], "last": ratios[-1],
                     "median": median, "steps": len(ratios), "flag": flag}
    return out


def teacher_check(res: Results, control: str, names: list[str], metrics: list[str]) -> list[dict]:
    """Per metric: the teacher's mean against the control's and each distilled model's mean (empty without a
    teacher)."""
    if TEACHER_NAME not in res.models:
        return []
    rows = []
    for k in metrics:
        t = res.models[TEACHER_NAME].get(k)
        if not t:
            continue
        t_mean = _mean(list(t.values()))
        for n in [control, *names]:
            s = res.models[n].get(k)
            if s:
                s_mean = _mean(list(s.values()))
                rows.append({"metric": k, "student": n, "teacher": t_mean, "student_mean": s_mean,
                             "teacher_beats_student": t_mean > s_mean})
    return rows


def diagnose(res: Results, result: dict) -> dict:
    scales = {}
    for name in sorted({r["model"] for r in result["rows"]}):
        for seed, log in sorted(res.logs.get(name, {}).items(), key=lambda kv: str(kv[0])):
            scales[f"{name} seed {seed}"] = term_scales(log)
    names = sorted({r["model"] for r in result["rows"]})
    return {"term_scales": scales, "teacher": teacher_check(res, result["control"], names, result["metrics"])}


def format_diagnose(diag: dict) -> str:
    out = ["diagnosis: each distillation term / task loss over training (first, middle, last logged step)"]
    if not diag["term_scales"]:
        out.append("  no metrics.jsonl among the inputs (benchmark JSON carries no loss curves): pass run directories")
    for run, terms in diag["term_scales"].items():
        out.append(f"  {run}")
        for term, s in terms.items():
            flag = {"too large": "  <-- over 1000x the task loss: it swamps detection",
                    "too small": "  <-- under 0.001x the task loss: it does nothing",
                    "always zero": "  <-- 0 on every step: it does nothing (warm-up? empty masks?)"}.get(s["flag"], "")
            out.append(f"    {term:<28} {s['first']:.3g}x  {s['middle']:.3g}x  {s['last']:.3g}x{flag}")
    if diag["teacher"]:
        out.append("teacher vs students on val (mean over seeds):")
        for r in diag["teacher"]:
            word = "beats" if r["teacher_beats_student"] else "does NOT beat"
            out.append(f"  {r['metric']}: teacher {r['teacher']:.4f} {word} {r['student']} {r['student_mean']:.4f}")
        if any(not r["teacher_beats_student"] for r in diag["teacher"]):
            out.append("  a teacher no better than its student has nothing to teach on that metric")
    else:
        out.append("teacher: not among the inputs (name a run or model 'teacher' to check it beats the students)")
    return "\n".join(out)
