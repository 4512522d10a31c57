"""``detkd demo faces``: the face-detection story on SynthFaces, on CPU, in minutes.

teacher (shipped checkpoint, or trained) -> baseline student, 30 epochs from scratch (shipped for seed 0, or
trained) -> three fine-tunes of that baseline with the same 6 extra epochs: no distillation (the
schedule-matched control), TDKD, and the generic `feat` baseline. Every model is evaluated with the WIDER
evaluation under two test protocols (``tdkd-640``, TDKD's upscaled test at SynthFaces' scale, and the
original-size ``biubug6-origin``); one table (AP, params, FLOPs, latency), PR curves, loss curves and the
teacher / baseline / TDKD detections on the same val scenes are written under one directory, with the
``part.json`` of the demo page.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detkd.config import load_config
from detkd.demo.common import ASSETS, Model, PartResult, draw_gallery, loss_figure, model_cost, shipped, train_export
# Re-create with: detkd train retinaface/mnet075_tasks_synthfaces train.epochs=90   (about 40 min on 2 cores)
#                 detkd export runs/mnet075_tasks_synthfaces --out detkd/assets/synthfaces_teacher_mnet075.safetensors
# (or `detkd demo --retrain-teacher`). 90 epochs, not the student's 30: with 30 the students caught up with it
# (benchmarks/results/tdkd_synthfaces_investigation.md, cause 3).
TEACHER_ASSET = ASSETS / "synthfaces_teacher_mnet075.safetensors"
TEACHER_RECIPE = "detkd train retinaface/mnet075_tasks_synthfaces train.epochs=90 (about 40 min on 2 cores)"
# The seed-0 baseline of `python benchmarks/kd_gain_tdkd.py` (runs/kd_gain/seed0/baseline/student.*), shipped so that
# `make demo` fits in 15 minutes; `detkd demo --retrain-baseline` trains it again with the same recipe
BASELINE_ASSET = ASSETS / "synthfaces_baseline_mnet025.safetensors"
BASELINE_RECIPE = ("detkd train retinaface/mnet025_synthfaces train.epochs=30 train.seed=0 (the seed-0 baseline of "
                   "benchmarks/kd_gain_tdkd.py; `detkd demo faces --retrain-baseline` trains it here)")

STUDENT_CFG = "retinaface/mnet025_synthfaces"
TEACHER_CFG = "retinaface/mnet075_tasks_synthfaces"
FINETUNE_CFGS = {  # run name -> config; each fine-tunes the baseline for the same number of epochs
    "baseline_extra": STUDENT_CFG,
    "tdkd": "tdkd/retinaface_mnet075_to_mnet025_synthfaces",
    "feat": "feat/retinaface_mnet075_to_mnet025_synthfaces",
}


@dataclass
class DemoSchedule:
    # 30 epochs: the student is still improving, but past the long from-scratch plateau (benchmarks/results/
    # tdkd_synthfaces_investigation.md); 16 epochs left students that fall apart at the 2x test scale
    baseline_epochs: int = 30
    # 6, not the paired benchmark's 10: a fresh-clone `make demo` with 10 took 1321 s (faces part 843 s, of which
    # 734 s the three fine-tunes, 2026-12-07, idle 2 cores), over the 20-minute budget; 6 saves about 290 s
    extra_epochs: int = 6
    teacher_epochs: int = 90
    max_iters: int = 0  # >0: stop every run after this many iterations (smoke test)
    val_images: int = 0  # >0: evaluate on the first N val images only (smoke test; 0 = all 150)

    @classmethod
    def quick(cls):
        return cls(baseline_epochs=1, extra_epochs=1, teacher_epochs=1, max_iters=3, val_images=10)


# The headline protocol is TDKD's own upscaled test at SynthFaces' scale; the original-size one is reported too.
PROTOCOLS = ("tdkd-640", "biubug6-origin")




def evaluate_model(weights: Path, data_root: Path, out: Path, size: int, max_images: int = 0,
                   label: str = "") -> dict:
    """AP under every protocol of ``PROTOCOLS`` (the first one also at the top level) and the model's cost;
    ``max_images`` > 0: the first N val images only; a progress bar per protocol labelled ``eval <label> <protocol>``."""
    from detkd.experiment import evaluate_widerface
    from detkd.models.weights import load_model_file

    model, _ = load_model_file(weights)
    res = {}
    for protocol in PROTOCOLS:
        res[protocol] = evaluate_widerface(model, data_root / "val" / "images", data_root / "val" / "gt",
                                           protocol, max_images=max_images, plot_dir=out / protocol,
                                           desc=f"eval {label} {protocol}")
    return {**res[PROTOCOLS[0]], **res, **model_cost(model, size)}


def table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (AP in %)."""
    origin = PROTOCOLS[1]
    header = ["model", "easy AP", "medium AP", "hard AP", f"({origin}: easy / medium / hard)", "params", "GFLOPs",
              "CPU latency (ms)"]
    rows = []
    for name, r in results.items():
        o = " / ".join(f"{100 * r[origin][s]:.1f}" for s in ("easy", "medium", "hard"))
        rows.append([name, f"{100 * r['easy']:.1f}", f"{100 * r['medium']:.1f}", f"{100 * r['hard']:.1f}", o,
                     f"{r['params'] / 1e6:.3f}M", f"{r['gflops']:.2f}", f"{r['latency_ms']:.1f}"])
    return header, rows


def write_table(results: dict, path: Path) -> str:
    from detkd.reporting import markdown_table

    table = "\n".join(markdown_table(*table_rows(results)))
    path.write_text(table + "\n")
    return table


def plot_pr(out_dir: Path, names: list[str]) -> Path:
    """PR curves of every model on one figure per subset (headline protocol)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for name in names:
        f = out_dir / name / "eval" / PROTOCOLS[0] / "pr_curves.npz"
        if not f.is_file():
            continue
        c = np.load(f)
        for ax, sub in zip(axes, ("easy", "medium", "hard")):
            ax.plot(c[f"{sub}_rec"], c[f"{sub}_prec"], label=name)
    for ax, sub in zip(axes, ("easy", "medium", "hard")):
        ax.set(title=f"SynthFaces {sub} ({PROTOCOLS[0]})", xlabel="recall", ylabel="precision", xlim=(0, 1),
               ylim=(0, 1.01))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out_dir / "pr_curves.png", dpi=110)
    plt.close(fig)
    return out_dir / "pr_curves.png"


def gallery(models: list[Model], data_root: Path, out_dir: Path, n_images: int) -> dict[str, list[Path]]:
    """The first ``n_images`` val scenes with the detections of each model (headline protocol, score >= 0.5)."""
    from detkd.data.widerface import WiderFaceVal
    from detkd.infer import detect_image

    val = WiderFaceVal(data_root / "val" / "images", data_root / "val" / "gt")
    images = []
    for i in range(min(n_images, len(val))):
        image, meta = val[i]
        xywh = np.asarray(meta["boxes"], np.float64).reshape(-1, 4)
        images.append((Path(meta["image_id"]).name, image, np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)))
    return draw_gallery(models, images, lambda m, im: detect_image(m, im, PROTOCOLS[0]), out_dir, min_score=0.5)


def run_demo(out_dir: Path, quick: bool = False, seed: int = 0, retrain_teacher: bool = False,
             shipped_baseline: bool = True, schedule: DemoSchedule | None = None,
             baseline_weights: Path | None = None) -> dict:
    """Run the face part under ``out_dir`` and return {model: results}; also writes ``part.json`` for the page.

    ``baseline_weights``: an exported student to fine-tune instead of the shipped or trained baseline (then the
    seed only changes the three fine-tunes: data order, augmentation, adapter initialisation).
    """
    from detkd.data.synthfaces import ensure_synthfaces

    t_start = time.time()
    if baseline_weights is not None and not Path(baseline_weights).is_file():  # fail before any training
        raise FileNotFoundError(f"baseline weights {baseline_weights} not found (give a `detkd export` file)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sched = schedule or (DemoSchedule.quick() if quick else DemoSchedule())
    if sched != DemoSchedule():
        shipped_baseline = False  # the shipped baseline is the default schedule's
    data_root = out_dir / "synthfaces"
    base = load_config(STUDENT_CFG, [f"data.root={data_root}"])
    ensure_synthfaces(data_root)
    common = [f"data.root={data_root}", f"train.seed={seed}", f"train.max_iters={sched.max_iters}"]

    # 1. teacher: the shipped checkpoint (trained by `detkd demo faces --retrain-teacher`), else train it here
    if TEACHER_ASSET.is_file() and not retrain_teacher and not quick:
        teacher = shipped(TEACHER_ASSET, out_dir / "teacher" / "student.safetensors", "teacher", TEACHER_RECIPE)
    else:
        teacher, _ = train_export(TEACHER_CFG, "teacher", out_dir, [*common, f"train.epochs={sched.teacher_epochs}"])

    # 2. baseline student, 3. three schedule-matched fine-tunes of it
    if baseline_weights is not None:
        baseline = shipped(Path(baseline_weights), out_dir / "baseline" / "student.safetensors", "baseline",
                           f"given checkpoint {baseline_weights}")
    elif shipped_baseline and BASELINE_ASSET.is_file() and seed == 0 and not quick:
        baseline = shipped(BASELINE_ASSET, out_dir / "baseline" / "student.safetensors", "baseline",
                           BASELINE_RECIPE)
    else:
        baseline, _ = train_export(STUDENT_CFG, "baseline", out_dir,
                                   [*common, f"train.epochs={sched.baseline_epochs}"])
    models = [teacher, baseline]
    for name, config in FINETUNE_CFGS.items():
        # identical schedule for all three (no warm-up: they continue a trained model), only the loss differs
        extra = [*common, f"train.epochs={sched.extra_epochs}", f"train.init_weights={baseline.weights}",
                 "sched.warmup_iters=0"]
        if name != "baseline_extra":
            extra.append(f"distill.teacher_weights={teacher.weights}")
        models.append(train_export(config, name, out_dir, extra, distils=name != "baseline_extra")[0])

    # 4. evaluate everything, one table, figures and the same val scenes for teacher / baseline / TDKD
    size = base.data.img_size
    results = {m.name: evaluate_model(m.weights, data_root, out_dir / m.name / "eval", size, sched.val_images,
                                      f"{m.name} ({k}/{len(models)})") for k, m in enumerate(models, 1)}
    table = write_table(results, out_dir / "results.md")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    figures = [plot_pr(out_dir, [m.name for m in models])]
    loss = loss_figure(models, out_dir / "loss_curves.png")
    figures += [loss] if loss is not None else []
    shown = [teacher, baseline, next(m for m in models if m.name == "tdkd")]
    pics = gallery(shown, data_root, out_dir / "gallery", 1 if quick else 3)
    header, rows = table_rows(results)
    PartResult(
        key="faces", title="Face detection: RetinaFace on SynthFaces (TDKD)",
        intro=(f"Teacher (MobileNet-0.75 with task blocks) and the 0.25 baseline student, then {sched.extra_epochs} "
               "more epochs of the baseline three ways: no distillation (baseline_extra, the control), TDKD and "
               f"feat. WIDER evaluation, AP in % under {PROTOCOLS[0]} (and {PROTOCOLS[1]}); seed {seed}."),
        header=header, rows=rows, commands=[m.command for m in models],
        figures=[str(f.relative_to(out_dir)) for f in figures],
        gallery={k: [str(p.relative_to(out_dir)) for p in v] for k, v in pics.items()},
        gallery_models=[m.name for m in shown], wall_s=time.time() - t_start,
    ).save(out_dir)
    print(f"\nSynthFaces validation, WIDER evaluation, test protocol {PROTOCOLS[0]} "
          f"(and {PROTOCOLS[1]} in brackets), seed {seed}:\n{table}")
    print(f"\nwritten under {out_dir}: results.md, results.json, pr_curves.png, loss_curves.png, "
          f"one directory per model ({time.time() - t_start:.0f}s in all)")
    print("\n" + "\n".join(gain_summary(results, seed, benchmark_results_dir())))
    return results


def _gain_line(per_seed: list[float]) -> str:
    """``+3.0 (per seed +2.6, +3.8, +2.6)``: mean TDKD − control hard AP with its per-seed values."""
    mean = sum(per_seed) / len(per_seed)
    if len(per_seed) == 1:
        return f"{mean:+.1f}"
    return f"{mean:+.1f} (per seed " + ", ".join(f"{g:+.1f}" for g in per_seed) + ")"


def benchmark_results_dir() -> Path | None:
    """``benchmarks/results`` of the repo checkout detkd runs from (editable install or PYTHONPATH), or None
    where detkd runs from an installed copy that has no benchmarks beside it."""
    from detkd.reporting import REPO_ROOT

    d = REPO_ROOT / "benchmarks" / "results"
    return d if d.is_dir() else None


def benchmark_gains(path: Path) -> dict | None:
    """The paired hard-AP gains (TDKD − control, AP %) of one ``benchmarks/kd_gain_tdkd.py`` result file, per
    protocol, with what the file says about how it was run; None for a quick (smoke) run or a file of another
    shape. ``threads`` is the torch thread count: the file's ``threads`` key, else the ``_threadsN`` of its tag,
    else None (not recorded)."""
    import re

    try:
        d = json.loads(path.read_text())
        protos = d.get("protocols") or {d["protocol"]: d["models"]}
        gains = {p: [100 * (t - c) for t, c in zip(m["tdkd"]["hard"], m["baseline_extra"]["hard"])]
                 for p, m in protos.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if d.get("quick") or not all(gains.values()):
        return None
    threads = d.get("threads")
    tag = re.search(r"_threads(\d+)$", path.stem)
    if threads is None and tag:
        threads = int(tag.group(1))
    return {"gains": gains, "seeds": d.get("seeds", list(range(len(next(iter(gains.values())))))),
            "threads": threads, "schedule": d.get("schedule", {}), "teacher_epochs": d.get("teacher_epochs"),
            "baseline_weights": d.get("baseline_weights"), "commit": str(d.get("commit", "unknown"))[:8]}


def gain_summary(results: dict, seed: int, results_dir: Path | None) -> list[str]:
    """This run's TDKD − control hard AP, labelled as one seed, beside every paired benchmark of
    ``results_dir/tdkd_synthfaces*.json`` (nothing about benchmarks when ``results_dir`` is None).

    One seed's number depends on the machine and the torch thread count (floating-point summation order
    changes the fine-tunes from their first steps), so it is printed as one sample, not as the result."""
    import torch

    lines = [f"Hard AP, TDKD − control (baseline_extra), this run: one seed ({seed}), machine- and "
             f"thread-dependent (torch threads: {torch.get_num_threads()}):"]
    lines += [f"  {p}: {_gain_line([100 * (results['tdkd'][p]['hard'] - results['baseline_extra'][p]['hard'])])}"
              for p in PROTOCOLS]
    files = sorted(results_dir.glob("tdkd_synthfaces*.json")) if results_dir is not None else []
    shown = False
    for f in files:
        b = benchmark_gains(f)
        if b is None:
            continue
        sched = b["schedule"]
        setup = [f"seeds {', '.join(map(str, b['seeds']))}",
                 f"torch threads: {b['threads'] if b['threads'] is not None else 'not recorded'}"]
        if b["baseline_weights"]:
            setup.append(f"baselines from {b['baseline_weights']}")
        elif sched.get("baseline_epochs"):
            setup.append(f"baseline {sched['baseline_epochs']} epochs per seed")
        if sched.get("extra_epochs"):
            setup.append(f"{sched['extra_epochs']}-epoch fine-tunes"
                         + ("" if sched["extra_epochs"] == DemoSchedule.extra_epochs else ", not the demo's"))
        if b["teacher_epochs"] is not None:
            setup.append(f"teacher {b['teacher_epochs']} epochs"
                         + ("" if b["teacher_epochs"] == DemoSchedule.teacher_epochs else ", not the demo's"))
        setup.append(f"commit {b['commit']}")
        lines += [f"{len(b['seeds'])}-seed paired benchmark ({f.parent.parent.name}/{f.parent.name}/{f.name}: "
                  + "; ".join(setup) + "):"]
        lines += [f"  {p}: {_gain_line(g)}" for p, g in b["gains"].items()]
        shown = True
    if shown:
        lines.append("Read the paired benchmark as the result and this run as one sample of it (README, `make demo`).")
    return lines
