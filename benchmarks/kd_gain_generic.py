"""Does FGFI / DeFeat help on SynthShapes? Paired fine-tunes over seeds, plus the cost of a distillation step.

    python benchmarks/kd_gain_generic.py --method fgfi --detector faster_rcnn_vgg \\
        --teacher-weights T.safetensors [--seeds 0 1 2] [--baseline-epochs 12] [--finetune-epochs 4] \\
        [--baseline-weights B.safetensors] [--finetune-iters N] [--seed-list 0 1 | --reuse]
        [--data-root DIR] [--out runs/kd_gain_generic] [--results-dir benchmarks/results]
    python benchmarks/kd_gain_generic.py --method defeat --detector retinanet --timing-only   # step ratio only
    python benchmarks/kd_gain_generic.py --method fgfi --detector faster_rcnn_vgg --smoke --results-dir /tmp/x

Pairs (method, detector) → (student config, distillation config):
``fgfi/faster_rcnn_vgg`` (VGG-16 ×0.375 → VGG-11 ×0.25, C4), ``fgfi/faster_rcnn_fpn`` and ``defeat/faster_rcnn_fpn``
(R18 ×0.5 → R18 ×0.25 FPN), ``defeat/retinanet`` (R18 ×0.5 → R18 ×0.25 RetinaNet): the capacity benchmark's
teachers and students; see ``configs/{fgfi,defeat}/*_synthshapes.py``.

Per seed: one baseline student trained from scratch (``--baseline-epochs``; or one shared ``--baseline-weights``
export, e.g. the shipped baseline), then identical fine-tunes of it
(``--finetune-epochs``, no warm-up, same seed): ``control`` (no distillation, the schedule-matched control),
``distilled`` (the method's config as it is, with ``--method-override`` applied) and ``feat`` (FitNets hints on
the method's taps, unmasked, 1×1 adapters). Seeds can run in separate processes (``--seed-list 0 1`` and
``--seed-list 2`` with the same ``--out``, each saving ``seed<k>/records.json``), then one call with ``--seeds 0 1 2
--reuse`` merges them, measures the step ratio and writes the results. Each model is scored on the val split with VOC07 mAP@0.5
(11-point, the config's test protocol) and COCO AP (one inference pass feeds both evaluators).

The step-time ratio is time(distillation step) / (time(student-only step) + time(teacher forward)), medians
over interleaved rounds in one process on one training batch (the config's batch size), FGFI's warm-up off
so the imitation is computed.

Writes ``<results-dir>/kd_gain_<method>_<detector>.json`` with exactly the keys
``method, detector, metric, seeds, control, distilled, feat, coco_ap{control, distilled, feat}, step_ratio,
wall_s`` (scores as fractions, lists in seed order) and a Markdown table with the verdict: the method meets the
bar when the mean of its per-seed gains over the control exceeds twice their sample std, every seed gains and
its mean is not below ``feat``'s. ``--smoke`` runs every stage at toy size (8 training images, 2 iterations,
a 2-iteration teacher) to prove the pipeline; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detkd.config import ExperimentConfig, load_config
from detkd.pretrain_trunk import trunk_for
from detkd.reporting import git_commit, markdown_table, write_results

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Pair:
    student: str  # the baseline's config
    distill: str  # the method's SynthShapes distillation config


PAIRS = {
    ("fgfi", "faster_rcnn_vgg"): Pair("faster_rcnn/vgg_lite_synthshapes", "fgfi/faster_rcnn_vgg_lite_synthshapes"),
    ("fgfi", "faster_rcnn_fpn"): Pair("faster_rcnn/fpn_lite_synthshapes", "fgfi/faster_rcnn_fpn_lite_synthshapes"),
    ("defeat", "faster_rcnn_fpn"): Pair("faster_rcnn/fpn_lite_synthshapes", "defeat/faster_rcnn_fpn_lite_synthshapes"),
    ("defeat", "retinanet"): Pair("retinanet/r18_lite_synthshapes", "defeat/retinanet_lite_synthshapes"),
}
RUNS = ("control", "distilled", "feat")


@dataclass
class Data:
    root: Path
    n_train: int = 1500
    n_val: int = 500
    max_long: int = 0  # 0: the config's data.max_long
    preset: str = "cpu"  # the generator preset of the pair's configs (a root remembers it)

    def train_set(self, cfg: ExperimentConfig):
        from detkd.data.synthshapes import synthshapes

        return synthshapes(root=str(self.root), split="train", img_size=cfg.data.img_size,
                           max_long=self.max_long or cfg.data.max_long, seed=cfg.train.seed, n_train=self.n_train,
                           n_val=self.n_val, preset=self.preset)

    def val_set(self):
        from detkd.data.synthshapes import synthshapes

        return synthshapes(root=str(self.root), split="val", n_train=self.n_train, n_val=self.n_val,
                           preset=self.preset)


# ------------------------------------------------------------------------------------------- training


def train_export(cfg: ExperimentConfig, data: Data) -> Path:
    """Train ``cfg`` (the Trainer, SynthShapes at ``data``) and export its student; returns the export path."""
    from detkd.engine.checkpoint import export_student
    from detkd.engine.loop import Trainer
    from detkd.experiment import build_collate, build_task

    torch.manual_seed(cfg.train.seed)
    task = build_task(cfg)
    train_set = data.train_set(cfg)
    collate = build_collate(cfg)
    if cfg.distill is not None:  # the run's start-up checks, as `detkd train` does them
        sample = collate([train_set[i] for i in range(min(2, len(train_set)))])
        task.check_setup(sample, teacher_loaded=True, accuracy_batches=[sample])
    t0 = time.time()
    Trainer(cfg, task, train_set, evaluate=None, collate_fn=collate).fit()
    export = cfg.run_dir / "student.safetensors"
    export_student(cfg.run_dir, export)
    print(f"[kd_gain] {cfg.name}: {time.time() - t0:.0f}s -> {export}", flush=True)
    return export


def finetune_length(args) -> tuple[list[str], str]:
    """The fine-tunes' length overrides and their description: ``--finetune-epochs``, or with ``--finetune-iters N``
    a stop after N iterations whose cosine decays over those N (``sched.total_iters``)."""
    if args.smoke:
        return [], ""
    if args.finetune_iters:
        n = args.finetune_iters
        return ([f"train.epochs={args.finetune_epochs}", f"train.max_iters={n}", f"sched.total_iters={n}"],
                f"{n}-iteration cosine schedules (sched.total_iters)")
    return [f"train.epochs={args.finetune_epochs}"], f"{args.finetune_epochs} epochs"


def common_overrides(out: Path, seed: int, extra: list[str]) -> list[str]:
    return [f"train.out_dir={out}", f"train.seed={seed}", "train.progress=false", "train.tensorboard=false",
            "train.eval_every=0", *extra]


def feat_config(cfg: ExperimentConfig) -> None:
    """Replace ``cfg.distill``'s method by unmasked FitNets hints on the same taps (same teacher)."""
    from detkd.distill.distiller import DistillConfig
    from detkd.distill.feat import FeatConfig

    d = cfg.distill
    section = d.config_section(d.methods[0])
    cfg.distill = DistillConfig(teacher=d.teacher, teacher_weights=d.teacher_weights, methods=["feat"],
                                feat=FeatConfig(student_taps=list(section.student_taps),
                                                teacher_taps=list(section.teacher_taps)))


def finetune_configs(pair: Pair, out: Path, seed: int, baseline: Path, teacher: Path, epochs_or_iters: list[str],
                     method_overrides: list[str]) -> dict[str, ExperimentConfig]:
    ft = [f"train.init_weights={baseline}", "sched.warmup_iters=0", *epochs_or_iters]
    cfgs = {}
    control = load_config(pair.distill, [*common_overrides(out, seed, ft), "name=control"])
    control.distill = None
    cfgs["control"] = control
    cfgs["distilled"] = load_config(pair.distill, [*common_overrides(out, seed, ft), "name=distilled",
                                                   f"distill.teacher_weights={teacher}", *method_overrides])
    feat = load_config(pair.distill, [*common_overrides(out, seed, ft), "name=feat",
                                      f"distill.teacher_weights={teacher}"])
    feat_config(feat)
    cfgs["feat"] = feat
    return cfgs


# ----------------------------------------------------------------------------------------- evaluation


class VocAndCoco:
    """One inference pass, two evaluators: VOC07 mAP (VOC ids) and COCO AP (integer image ids)."""

    def __init__(self, val, ann_file: Path):
        from detkd.eval.base import build_evaluator

        self.voc = build_evaluator("voc", dataset=val)
        self.coco = build_evaluator("coco", ann_file=ann_file)

    def reset(self) -> None:
        self.voc.reset()
        self.coco.reset()

    def process(self, metas, outputs) -> None:
        self.voc.process(metas, outputs)
        self.coco.process([{**m, "image_id": int(m["image_id"])} for m in metas], outputs)

    def evaluate(self) -> dict:
        return {"voc07_map": float(self.voc.evaluate()["mAP"]), "coco_ap": float(self.coco.evaluate()["AP"])}


def evaluate(weights: Path, protocol: str, data: Data) -> dict:
    from detkd.experiment import evaluate_detector
    from detkd.models.weights import load_model_file

    model, _ = load_model_file(weights)
    val = data.val_set()
    res = evaluate_detector(model, val, VocAndCoco(val, data.root / "annotations" / "instances_val.json"),
                            protocol, progress=False)
    print(f"[kd_gain] {weights}: VOC07 mAP {res['voc07_map']:.4f}, COCO AP {res['coco_ap']:.4f}", flush=True)
    return res


# ------------------------------------------------------------------------------------------- timing


def step_time_ratio(pair: Pair, data: Data, teacher_weights: Path | None, repeats: int,
                    batch_size: int | None = None, img_size: int | None = None) -> dict:
    """Medians of a distillation step, a student-only step and a teacher forward on one training batch, run
    interleaved (round-robin) in this process; the first two rounds are warm-up. Without ``teacher_weights``
    the teacher keeps its random initialisation (the cost does not depend on the weights). Clock: this
    process's CPU time (the 2-core machine is shared; waiting for a core is not the step's cost).

    ``ratio`` = distill step / (student step + the teacher's full eval forward). Where the distillation runs
    less of the teacher (``DistillTask.teacher_skip``: no second stage, no head), ``teacher_taps_forward`` times
    that forward too and ``ratio_taps`` divides by it: the overhead of the method's own work (adapters, masks,
    losses) alone."""
    from detkd.distill.distiller import build_distill_task
    from detkd.experiment import DetectionTask, build_collate
    from detkd.models.weights import load_teacher
    from detkd.registry import build_model

    cfg = load_config(pair.distill)
    if batch_size:
        cfg.train.batch_size = batch_size
    if img_size:
        cfg.data.img_size = img_size
    if "fgfi" in cfg.distill.methods:
        cfg.distill.fgfi.warmup_iters = 0  # the imitation is computed (and costed) from the first step
    torch.manual_seed(0)
    student = build_model(cfg.model)
    teacher = load_teacher(cfg.distill.teacher, teacher_weights) if teacher_weights else build_model(cfg.distill.teacher)
    task = build_distill_task(cfg.distill, student, teacher).train()
    plain = DetectionTask(student).train()
    ds = data.train_set(cfg)
    batch = build_collate(cfg)([ds[i] for i in range(min(cfg.train.batch_size, len(ds)))])
    opt_d = torch.optim.SGD(task.parameters(), lr=1e-6, momentum=0.9)
    opt_s = torch.optim.SGD(plain.parameters(), lr=1e-6, momentum=0.9)

    def step(t, opt):
        loss = sum(t(batch).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def teacher_forward():
        with torch.no_grad():
            teacher(batch[0])

    def teacher_taps_forward():
        with torch.no_grad():
            teacher(batch[0], skip=task.teacher_skip)

    fns = {"distill_step": lambda: step(task, opt_d), "student_step": lambda: step(plain, opt_s),
           "teacher_forward": teacher_forward}
    if task.teacher_skip:
        fns["teacher_taps_forward"] = teacher_taps_forward
    times = {k: [] for k in fns}
    for i in range(repeats + 2):
        for k, fn in fns.items():
            t0 = time.process_time()
            fn()
            if i >= 2:
                times[k].append(time.process_time() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    med["ratio"] = med["distill_step"] / (med["student_step"] + med["teacher_forward"])
    taps = med.get("teacher_taps_forward", med["teacher_forward"])
    med["ratio_taps"] = med["distill_step"] / (med["student_step"] + taps)
    med["teacher_skip"] = list(task.teacher_skip)
    med["batch"] = [int(x) for x in batch[0].shape]
    return med


# -------------------------------------------------------------------------------------------- verdict


def sample_std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def verdict(control: list[float], distilled: list[float], feat: list[float]) -> dict:
    """The issue's bar on per-seed paired gains: ``detkd compare``'s rule (``reporting.paired_gain``: sample std,
    ddof 1) plus "not below feat"."""
    from detkd.reporting import paired_gain

    g = paired_gain(control, distilled)
    return {"gains": g["diffs"], "mean_gain": g["mean"], "gain_std": g["std"],
            "above_2std": bool(len(g["diffs"]) > 1 and g["mean"] > 2 * g["std"]),
            "every_seed_gains": g["every_seed_gains"], "verdict": g["verdict"],
            "not_below_feat": statistics.fmean(distilled) >= statistics.fmean(feat)}


def fmt(xs: list[float]) -> str:
    sd = sample_std(xs)
    return f"{100 * statistics.fmean(xs):.2f} ± {100 * sd:.2f}" if len(xs) > 1 else f"{100 * xs[0]:.2f}"


def markdown(res: dict, baseline: dict, timing: dict, schedule: str, smoke: bool) -> list[str]:
    m, d = res["method"], res["detector"]
    lines = [f"# {m} on `{d}` (SynthShapes)", ""]
    if smoke:
        lines += ["**SMOKE RUN: toy data and 2-iteration schedules; the numbers below prove the pipeline only.**", ""]
    lines += [f"{len(res['seeds'])} seed(s) {res['seeds']}; {schedule}. Scores in %, mean ± sample std over seeds.",
              ""]
    rows = []
    for k, seed in enumerate(res["seeds"]):
        rows.append([seed, f"{100 * baseline['voc07_map'][k]:.2f}",
                     *(f"{100 * res[r][k]:.2f}" for r in RUNS), *(f"{100 * res['coco_ap'][r][k]:.2f}" for r in RUNS)])
    rows.append(["mean", fmt(baseline["voc07_map"]), *(fmt(res[r]) for r in RUNS),
                 *(fmt(res["coco_ap"][r]) for r in RUNS)])
    lines += markdown_table(["seed", "baseline mAP", "control mAP", f"{m} mAP", "feat mAP", "control AP",
                             f"{m} AP", "feat AP"], rows)
    ok = {True: "yes", False: "NO"}
    for name, (c, dd, f) in (("VOC07 mAP@0.5", (res["control"], res["distilled"], res["feat"])),
                             ("COCO AP", tuple(res["coco_ap"][r] for r in RUNS))):
        v = verdict(c, dd, f)
        lines += ["", f"{name}: gain over the control per seed " + ", ".join(f"{100 * g:+.2f}" for g in v["gains"])
                  + f"; mean {100 * v['mean_gain']:+.2f}, 2 × sample std {200 * v['gain_std']:.2f} "
                  f"(above: {ok[v['above_2std']]}); every seed gains: {ok[v['every_seed_gains']]}; "
                  f"not below feat: {ok[v['not_below_feat']]}. Bar met: "
                  f"{ok[v['above_2std'] and v['every_seed_gains'] and v['not_below_feat']]}."]
    lines += ["", f"Step-time ratio distill / (student + teacher forward): {res['step_ratio']:.3f} (bar ≤ 1.15; "
              f"medians: distill {1000 * timing['distill_step']:.0f} ms, student {1000 * timing['student_step']:.0f} ms, "
              f"teacher forward {1000 * timing['teacher_forward']:.0f} ms, batch {timing['batch']}). "
              f"Wall time {res['wall_s']:.0f} s; commit {git_commit()[:8]}."]
    return lines


# ----------------------------------------------------------------------------------------------- main


def run_seed(args, pair: Pair, data: Data, seed: int, teacher: Path, size: list[str], protocol: str) -> dict:
    """One seed: the baseline (trained, or ``--baseline-weights``) and the three fine-tunes, each evaluated. The
    scores are saved as ``<out>/seed<k>/records.json`` and read back instead with ``--reuse``."""
    out = args.out / f"{args.method}_{args.detector}" / f"seed{seed}"
    path = out / "records.json"
    if args.reuse and path.is_file():
        print(f"[kd_gain] seed {seed}: reusing {path}", flush=True)
        return with_shared_rows(args, seed, json.loads(path.read_text()))
    if args.baseline_weights:
        baseline = args.baseline_weights
    else:
        base_cfg = load_config(pair.student, [*common_overrides(out, seed, size), "name=baseline",
                                              *([] if args.smoke else [f"train.epochs={args.baseline_epochs}"])])
        baseline = train_export(base_cfg, data)
    exports = {"baseline": baseline}
    ft_len = finetune_length(args)[0]
    for name, cfg in finetune_configs(pair, out, seed, baseline, teacher, [*size, *ft_len],
                                      args.method_override).items():
        if args.share_from and name != "distilled":
            continue  # the other method's run of this seed is the same run (same config, seed and baseline)
        done = cfg.run_dir / "student.safetensors"
        exports[name] = done if args.keep_exports and done.is_file() else train_export(cfg, data)
    record = {name: evaluate(w, protocol, data) for name, w in exports.items()}
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return with_shared_rows(args, seed, record)


def with_shared_rows(args, seed: int, record: dict) -> dict:
    """``record`` with the control and feat rows of ``--share-from``'s run of the same seed filled in (only
    once they exist: a --seed-list call saves its own rows; the merging --reuse call needs them)."""
    if not args.share_from or (args.seed_list and not args.reuse):
        return record
    other = args.out / f"{args.share_from}_{args.detector}" / f"seed{seed}" / "records.json"
    if not other.is_file():
        raise SystemExit(f"--share-from {args.share_from}: {other} not found (run that method's seeds first)")
    shared = json.loads(other.read_text())
    if shared["baseline"] != record["baseline"]:
        raise SystemExit(f"--share-from {args.share_from}: {other} has another baseline score; the runs differ")
    return {**record, "control": shared["control"], "feat": shared["feat"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", required=True, choices=sorted({m for m, _ in PAIRS}))
    ap.add_argument("--detector", required=True, choices=sorted({d for _, d in PAIRS}))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher-weights", type=Path, help="the shipped SynthShapes teacher export (required, except "
                    "with --smoke, which trains a 2-iteration teacher, and --timing-only)")
    ap.add_argument("--seed-list", type=int, nargs="+", help="run only these seeds and save their records (one "
                    "process per core); a last call with --seeds ... --reuse merges them and writes the results")
    ap.add_argument("--reuse", action="store_true", help="read <out>/<method>_<detector>/seed<k>/records.json "
                    "where it exists")
    ap.add_argument("--baseline-weights", type=Path, default=None, help="one trained baseline export (e.g. the "
                    "shipped detkd/assets/synthshapes_baseline_<detector>.safetensors) fine-tuned by every seed, "
                    "instead of a baseline trained per seed")
    ap.add_argument("--finetune-iters", type=int, default=0, help=">0: every fine-tune stops after N iterations "
                    "and its cosine schedule decays over those N (sched.total_iters; runs before 2026-12-07 18:20 "
                    "cut a --finetune-epochs cosine at N instead)")
    ap.add_argument("--share-from", default=None, metavar="METHOD", help="take the control and feat runs of each "
                    "seed from this other method's records on the same detector (same baseline, seed and schedule: "
                    "the same runs) instead of training them again; feat's taps must be the same")
    ap.add_argument("--keep-exports", action="store_true", help="a fine-tune whose student.safetensors exists is "
                    "taken as it is, not trained again (resuming an interrupted benchmark)")
    ap.add_argument("--data-root", type=Path, default=None, help="SynthShapes root (default: the configs' own)")
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--baseline-epochs", type=int, default=12)
    ap.add_argument("--finetune-epochs", type=int, default=4)
    ap.add_argument("--method-override", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for the distilled fine-tune only, e.g. distill.fgfi.warmup_iters=0")
    ap.add_argument("--out", type=Path, default=Path("runs/kd_gain_generic"))
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--timing-repeats", type=int, default=10)
    ap.add_argument("--timing-only", action="store_true", help="measure the step-time ratio only and print it")
    ap.add_argument("--smoke", action="store_true", help="toy sizes end to end (pipeline check; meaningless numbers)")
    args = ap.parse_args(argv)
    key = (args.method, args.detector)
    if key not in PAIRS:
        ap.error(f"no SynthShapes pair for {args.method} on {args.detector}; pairs: "
                 + ", ".join(f"{m}/{d}" for m, d in PAIRS))
    pair = PAIRS[key]
    if args.share_from:
        other = PAIRS.get((args.share_from, args.detector))
        mine = finetune_configs(pair, args.out, 0, Path("b"), Path("t"), [], [])
        theirs = finetune_configs(other, args.out, 0, Path("b"), Path("t"), [], []) if other else None
        if theirs is None or any(dataclasses.replace(mine[r], name="x") != dataclasses.replace(theirs[r], name="x")
                                 for r in ("control", "feat")):
            ap.error(f"--share-from {args.share_from}: its control / feat runs on {args.detector} are not this "
                     "method's (another student, schedule or feat taps)")
    if args.smoke and args.results_dir.resolve() == RESULTS.resolve():
        ap.error("--smoke results must not go to benchmarks/results: give --results-dir")
    t_start = time.time()
    scfg = load_config(pair.student).data
    data = Data(args.data_root or Path(scfg.root), args.n_train, args.n_val, preset=scfg.preset)
    if args.smoke:
        data = Data(args.out / "synthshapes", n_train=8, n_val=4, max_long=224, preset=scfg.preset)
    if args.timing_only:
        timing = step_time_ratio(pair, data, args.teacher_weights, args.timing_repeats)
        print(f"{args.method}/{args.detector}: step ratio {timing['ratio']:.3f} {timing}")
        return timing
    size = ["data.img_size=160", "train.batch_size=2", "train.max_iters=2", "train.log_every=1"] if args.smoke else []
    teacher = args.teacher_weights
    if args.smoke and teacher is None:  # a 2-iteration teacher: the pipeline needs one, its quality is irrelevant
        tcfg = load_config(pair.student, [*common_overrides(args.out, 0, size), "name=smoke_teacher"])
        tcfg.model = load_config(pair.distill).distill.teacher
        tcfg.train.backbone_init = trunk_for(tcfg.model)  # the student's trunk file does not fit the teacher
        made = tcfg.run_dir / "student.safetensors"
        teacher = made if made.is_file() else train_export(tcfg, data)  # a --reuse call keeps the first one
    if teacher is None or not Path(teacher).is_file():
        ap.error(f"--teacher-weights {teacher}: not a file (the benchmark needs the shipped SynthShapes teacher)")
    protocol = load_config(pair.student).eval.protocol
    scores = {r: {"voc07_map": [], "coco_ap": []} for r in ("baseline", *RUNS)}
    seeds = args.seed_list or args.seeds
    for seed in seeds:
        record = run_seed(args, pair, data, seed, teacher, size, protocol)
        for name, res in record.items():
            for k, v in res.items():
                scores[name][k].append(v)
    if args.seed_list and not args.reuse:
        print(f"[kd_gain] seeds {seeds} done; merge with --seeds ... --reuse", file=sys.stderr)
        return {}
    timing = step_time_ratio(pair, data, teacher, 2 if args.smoke else args.timing_repeats,
                             *((2, 160) if args.smoke else ()))
    result = {"method": args.method, "detector": args.detector, "metric": "voc07_map", "seeds": list(seeds),
              "control": scores["control"]["voc07_map"], "distilled": scores["distilled"]["voc07_map"],
              "feat": scores["feat"]["voc07_map"],
              "coco_ap": {r: scores[r]["coco_ap"] for r in RUNS},
              "step_ratio": timing["ratio"], "wall_s": time.time() - t_start}
    base = (f"the baseline {args.baseline_weights} (shared by every seed)" if args.baseline_weights else
            f"baseline {args.baseline_epochs} epochs from scratch per seed")
    length = finetune_length(args)[1]
    schedule = ("smoke: 2 iterations per stage" if args.smoke else
                f"{base}, then {length} per fine-tune (no warm-up), data {data.root} (preset {data.preset})"
                + (f", distilled run with {args.method_override}" if args.method_override else "")
                + (f"; the control and feat runs are {args.share_from}'s of the same seed (identical runs)"
                   if args.share_from else ""))
    lines = markdown(result, scores["baseline"], timing, schedule, args.smoke)
    js, md = write_results(args.results_dir, f"kd_gain_{args.method}_{args.detector}", result, lines)
    print("\n".join(lines))
    print(f"wrote {js} and {md}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
