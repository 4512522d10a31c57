"""Face-recognition KD benchmark on SynthIDs: teacher, ArcFace student and the five objectives of
MarginDistillation (METHODS.md §5.5), verification accuracy and TAR@FAR=1e-2 on SynthIDs ``val.bin``.

    .venv/bin/python benchmarks/facerec_kd.py [--seeds 3] [--quick] [--jobs 2] [--work runs/facerec_bench]

What runs (every recipe is the one of ``configs/facerec/*_synthids.py``, relocated under ``--work``):

1. SynthIDs at 48 px (64 training identities × 24 images, 600 verification pairs), written once.
2. The IResNet-18 (half width) ArcFace teacher, trained **once** (seed 0) and shared by every seed; then the
   teacher cache (embeddings + class centres) is built once and every student run reuses it.
3. Per seed: the ArcFace student, Angular, Margin-based with T (intended KD), MarginDistillation; then both
   triplet distillations, fine-tuned from that seed's ArcFace student. Runs go to ``--jobs`` processes with
   one thread each; a run whose ``summary.json`` matches its config is reused (``--fresh`` retrains).
4. The cached-teacher step time against a student-only step (same batch, same student), and for reference
   the step with the teacher run online.

Writes ``benchmarks/results/facerec_synthids.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from detkd.config import load_config  # noqa: E402
from detkd.reporting import git_commit, kd_gain_table, write_results  # noqa: E402

STUDENTS = ["arcface", "angular", "margin_t", "margin_distillation"]
TRIPLETS = ["triplet_l2", "triplet_cos"]
ORDER = ["teacher", "arcface", "angular", "triplet_l2", "triplet_cos", "margin_t", "margin_distillation"]
TITLES = {
    "teacher": "Teacher IResNet-18 (½ width, ArcFace)",
    "arcface": "MobileFaceNet ArcFace",
    "angular": "Angular distillation",
    "triplet_l2": "Triplet distillation L2",
    "triplet_cos": "Triplet distillation cos",
    "margin_t": "Margin-based with T (intended KD)",
    "margin_distillation": "MarginDistillation",
}


# ------------------------------------------------------------------------------------------ configs


def config_for(method: str, work: Path, seed: int, quick: bool):
    """The ``configs/facerec`` recipe of ``method``, relocated under ``work`` for ``seed``."""
    name = "teacher_iresnet18_synthids" if method == "teacher" else f"{method}_mobilefacenet_synthids"
    cfg = load_config(f"facerec/{name}")
    data_root = work / "synthids48"
    cfg.data.root, cfg.data.val_bin = str(data_root / "train"), str(data_root / "val.bin")
    cfg.train.out_dir = str(work / ("teacher" if method == "teacher" else f"seed{seed}"))
    cfg.train.seed = seed
    cfg.train.progress = False  # optional Trainer fields (read with getattr)
    cfg.train.tensorboard = False
    if quick:  # a smoke-sized run: a third of the epochs, the same schedule shape
        scale = max(1, cfg.train.epochs // 3) / cfg.train.epochs
        cfg.train.epochs = max(1, cfg.train.epochs // 3)
        cfg.sched.milestones = [m * scale for m in cfg.sched.milestones]
    if cfg.distill is not None:
        cfg.distill.teacher_weights = str(work / "teacher" / "teacher_iresnet18_synthids" / "final.pt")
        cfg.distill.cache_path = str(work / "teacher_cache_synthids.pt")
    if method in TRIPLETS:
        cfg.train.init_weights = str(work / f"seed{seed}" / "arcface_mobilefacenet_synthids" / "final.pt")
    return cfg


def run_one(method: str, work: str, seed: int, quick: bool, fresh: bool, threads: int) -> dict:
    """Train (or reuse) one run; returns its verification metrics and wall time."""
    torch.set_num_threads(threads)
    from detkd.experiment_facerec import train_facerec

    cfg = config_for(method, Path(work), seed, quick)
    run_dir = cfg.run_dir
    summary_path, config_path = run_dir / "summary.json", run_dir / "config.json"
    wanted = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    if not fresh and summary_path.is_file() and config_path.is_file():
        if json.loads(config_path.read_text()) == wanted:
            summary = json.loads(summary_path.read_text())
            if summary.get("eval"):
                return {"method": method, "seed": seed, "reused": True, **summary["eval"],
                        "wall_time_s": summary.get("wall_time_s")}
    t0 = time.time()
    summary = train_facerec(cfg, resume=False)
    print(f"[facerec] {method} seed {seed}: acc {summary['eval'].get('acc', float('nan')):.4f} "
          f"tar@1e-2 {summary['eval'].get('tar_far_1e-2', float('nan')):.4f} ({time.time() - t0:.0f}s)", flush=True)
    return {"method": method, "seed": seed, "reused": False, **summary["eval"], "wall_time_s": summary["wall_time_s"]}


# ------------------------------------------------------------------------------------------ step timing


def step_ratio(work: Path, quick: bool, steps: int = 12, batch: int = 64) -> dict:
    """Median step time of MarginDistillation with the cached teacher (embedding lookup by key included)
    over a student-only ArcFace step, on the same batch and student; plus an online-teacher step."""
    from detkd.distill.cache import TeacherCache
    from detkd.distill.facerec_objectives import build_face_task
    from detkd.experiment_facerec import build_facerec
    from detkd.models.weights import load_teacher
    from detkd.registry import build_model

    cfg = config_for("margin_distillation", work, 0, quick)
    run = build_facerec(cfg)  # reuses the cache file
    cache: TeacherCache = run.cache
    folder = run.train_set.base
    images = torch.stack([folder[i][0] for i in range(batch)])
    labels = torch.as_tensor(folder.labels[:batch])
    keys = folder.keys[:batch]
    teacher = load_teacher(cfg.distill.teacher, cfg.distill.teacher_weights)

    torch.manual_seed(0)
    plain = build_face_task(build_model(cfg.model), dataclasses.replace(cfg.distill, method="arcface"))
    md = run.task
    md.student.load_state_dict({k: v for k, v in plain.student.state_dict().items() if k != "head.weight"},
                               strict=False)
    opts = {k: torch.optim.SGD([p for p in t.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
            for k, t in (("plain", plain), ("md", md))}

    def step(kind: str) -> float:
        t0 = time.perf_counter()
        if kind == "plain":
            losses = plain((images, labels))
        elif kind == "md":
            t = cache.embeddings[torch.tensor([cache.index_of(k) for k in keys])]  # [B, D] cached teacher
            losses = md((images, labels, t))
        else:  # online teacher: the same MarginDistillation step, teacher forward included
            with torch.no_grad():
                t = teacher(images).embedding
            losses = md((images, labels, t))
        opt = opts["plain" if kind == "plain" else "md"]
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        return time.perf_counter() - t0

    times = {"plain": [], "md": [], "online": []}
    for i in range(steps + 2):
        for kind in times:  # interleaved, so that load changes hit every kind alike
            dt = step(kind)
            if i >= 2:
                times[kind].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "cached_step_ratio": med["md"] / med["plain"],
        "online_teacher_step_ratio": med["online"] / med["plain"],
        "step_s": med,
        "batch": batch,
        "threads": torch.get_num_threads(),
    }


# ------------------------------------------------------------------------------------------ report


def write_report(result: dict, out_dir: Path) -> None:
    lines = [
        "# Face-recognition KD on SynthIDs (CPU-sized)",
        "",
        f"`benchmarks/facerec_kd.py` at commit `{result['commit']}`, seeds {result['seeds']}"
        f"{' (--quick)' if result['quick'] else ''}. Verification on SynthIDs `val.bin` (600 pairs of unseen "
        "identities, 10-fold accuracy-flip, EVAL.md §3); mean ± population std over seeds, in %.",
        "The teacher is trained once (seed 0) and shared by all seeds; students differ by seed in initialisation "
        "and data order.",
        "",
        *kd_gain_table(result["models"], ("acc", "tar_far_1e-2"), ORDER, first="Model", digits=2, titles=TITLES,
                       extra={k: [len(m["acc"])] for k, m in result["models"].items()}, extra_header=("seeds",), metric_titles=("Accuracy", "TAR@FAR=1e-2")),
    ]
    t = result.get("timing", {})
    lines += [
        "",
        f"Cached-teacher training step / student-only step (MarginDistillation vs ArcFace, batch {t.get('batch')}, "
        f"{t.get('threads')} thread): **{result['cached_step_ratio']:.3f}** (target ≤ 1.05); with the teacher run "
        f"online instead: {t.get('online_teacher_step_ratio', float('nan')):.2f}.",
        "",
        f"Wall time of the whole benchmark: {result['wall_time_s'] / 60:.1f} min "
        f"({result['jobs']} processes × 1 thread).",
        "",
    ]
    write_results(out_dir, "facerec_synthids", result, lines, indent=1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="number of student seeds (0..N-1)")
    ap.add_argument("--quick", action="store_true", help="a third of the epochs (smoke run)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel training processes (one thread each)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "facerec_bench"), help="data, runs and cache")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where the JSON/MD go")
    ap.add_argument("--fresh", action="store_true", help="retrain runs even when a matching summary exists")
    args = ap.parse_args(argv)
    t0 = time.time()
    work = Path(args.work)
    seeds = list(range(args.seeds))

    from detkd.data.synthids import write_synthids
    from detkd.experiment_facerec import build_facerec

    write_synthids(work / "synthids48", seed=0, img_size=48)
    results = [run_one("teacher", str(work), 0, args.quick, args.fresh, max(1, args.jobs))]
    torch.set_num_threads(max(1, args.jobs))
    build_facerec(config_for("margin_distillation", work, 0, args.quick))  # the shared cache, built once

    ctx = get_context("spawn")  # no fork after OpenMP has run in this process
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        phase1 = [pool.submit(run_one, m, str(work), s, args.quick, args.fresh, 1) for s in seeds for m in STUDENTS]
        results += [f.result() for f in phase1]
        phase2 = [pool.submit(run_one, m, str(work), s, args.quick, args.fresh, 1) for s in seeds for m in TRIPLETS]
        results += [f.result() for f in phase2]

    torch.set_num_threads(1)
    timing = step_ratio(work, args.quick)
    models: dict[str, dict[str, list[float]]] = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        entry = models.setdefault(r["method"], {"acc": [], "tar_far_1e-2": []})
        entry["acc"].append(float(r["acc"]))
        entry["tar_far_1e-2"].append(float(r["tar_far_1e-2"]))
    result = {
        "models": {k: models[k] for k in ORDER if k in models},
        "cached_step_ratio": timing["cached_step_ratio"],
        "seeds": seeds,
        "commit": git_commit(),
        "teacher_seeds": [0],
        "quick": args.quick,
        "jobs": args.jobs,
        "timing": timing,
        "runs": results,
        "wall_time_s": time.time() - t0,
    }
    write_report(result, Path(args.out))
    print((Path(args.out) / "facerec_synthids.md").read_text())
    return result


if __name__ == "__main__":
    main()
