"""Does LD help? SynthShapes, lite GFL R34 teacher -> lite GFL R18 student, paired fine-tunes per seed.

    python benchmarks/kd_gain_ld.py [--seeds 3 | --seed-list 0 2] [--teacher-weights T.safetensors]
        [--baseline-weights B.safetensors] [--teacher-epochs N] [--baseline-epochs N] [--epochs 1]
        [--n-train 1500] [--n-val 500] [--img-size 0] [--max-iters 0] [--max-images 0] [--reuse]
        [--out runs/kd_gain_ld] [--results benchmarks/results] [--stem kd_gain_ld]

Seeds can run in separate processes (one core each): ``--seed-list 0 1`` and ``--seed-list 2`` with the same
``--out`` each write ``<out>/seed<k>/records.json``; a last call with ``--seeds 3 --reuse`` reads them, measures the
step ratio and writes the results. ``--baseline-weights`` fine-tunes one given baseline for every seed (seeds then
differ only in the fine-tunes' data order and augmentation) instead of training a baseline per seed.

Per seed: one baseline (``gfl/r18_lite_synthshapes``) and identical fine-tunes of it (``--epochs``, no warm-up,
``train.init_weights`` = the baseline export): ``control`` (no distillation), ``ld`` (main LD + KD + VLR,
``ld/ld_lite_synthshapes``), ``ld_no_vlr`` (``distill.ld.vlr_weight=0``), ``kd`` (classification KD only:
``ld_weight=0, vlr_weight=0``), ``feat`` (FitNet-style p3-p5 imitation with 1x1 adapters); ``self_ld``: the
seed's baseline teaching its own fine-tune (Self-LD, ``ld/self_ld_lite_synthshapes``); ``ta``: a TA chain, the
``ld`` row's export (taught by the teacher) teaching the baseline's fine-tune. Every model is evaluated on the
val split with GFL's test settings and greedy NMS (the headline) and with score-voting Cluster-DIoU-NMS:
COCO AP / AP75 (faster-coco-eval against ``annotations/instances_val.json``) and VOC07 11-point mAP@0.5.
The teacher is ``--teacher-weights`` (shipped) or trained here (``gfl/r18_half_teacher_synthshapes``).

Also the LD step-time ratio: time(LD step) / (time(student step) + time(teacher forward)), medians over
interleaved repeats on one batch. Writes ``<results>/<stem>.{json,md}`` with ``detkd.reporting``; the JSON has
the issue's keys (``control, ld, ld_no_vlr, kd, feat`` = COCO AP per seed, ``self_ld``, ``ap75``, ``voc07_map``,
``step_ratio``, ``wall_s``) plus ``ta``, ``cluster_nms`` (the same records with the voting NMS) and ``verdict``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from detkd.config import load_config
from detkd.eval.base import Evaluator
from detkd.reporting import git_commit, kd_gain_table, markdown_table, write_results

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = ("control", "ld", "ld_no_vlr", "kd", "feat")
NMS = ("greedy", "cluster-diou-voting")
METRICS = ("coco_ap", "ap75", "voc07_map")
FINETUNES = {  # row -> (config, extra overrides)
    "control": ("gfl/r18_lite_synthshapes", ["sched.warmup_iters=0"]),
    "ld": ("ld/ld_lite_synthshapes", []),
    "ld_no_vlr": ("ld/ld_lite_synthshapes", ["distill.ld.vlr_weight=0"]),
    "kd": ("ld/ld_lite_synthshapes", ["distill.ld.ld_weight=0", "distill.ld.vlr_weight=0"]),
    "feat": ("ld/ld_lite_synthshapes", ["distill.methods=[feat]"]),
    "self_ld": ("ld/self_ld_lite_synthshapes", []),
    "ta": ("ld/self_ld_lite_synthshapes", []),
}


class VOCAndCOCO(Evaluator):
    """VOC07 mAP@0.5 and the COCO stats of one pass over the SynthShapes val split (image ids: VOC stem ->
    COCO id through ``instances_val.json``)."""

    def __init__(self, val, root: Path):
        from detkd.eval.base import build_evaluator

        ann = root / "annotations" / "instances_val.json"
        data = json.loads(ann.read_text())
        self.ids = {Path(im["file_name"]).stem: im["id"] for im in data["images"]}
        self.voc = build_evaluator("voc", dataset=val)
        self.coco = build_evaluator("coco", ann_file=ann)

    def reset(self) -> None:
        self.voc.reset()
        self.coco.reset()

    def process(self, metas, outputs) -> None:
        self.voc.process(metas, outputs)
        self.coco.process([{**m, "image_id": self.ids[str(m["image_id"])]} for m in metas], outputs)

    def evaluate(self) -> dict:
        v, c = self.voc.evaluate(), self.coco.evaluate()
        return {"voc07_map": float(v["mAP"]), "coco_ap": float(c["AP"]), "ap50": float(c["AP50"]),
                "ap75": float(c["AP75"])}


def common_overrides(args, seed: int) -> list[str]:
    size = [f"data.img_size={args.img_size}", f"eval.protocol=torchvision-{args.img_size}"] if args.img_size else []
    return [f"data.root={args.data}", f"data.n_train={args.n_train}", f"data.n_val={args.n_val}", *size,
            f"train.out_dir={args.out / f'seed{seed}'}", f"train.seed={seed}", f"train.max_iters={args.max_iters}",
            "train.progress=false", "train.tensorboard=false", "train.overwrite=true"]


def train_export(name: str, overrides: list[str]) -> Path:
    from detkd.engine.checkpoint import export_student
    from detkd.experiment import train

    cfg = load_config(name, overrides)
    train(cfg, evaluate=False)
    return export_student(cfg.run_dir, cfg.run_dir / "student.safetensors")


def evaluate(weights: Path, args) -> dict:
    """``{nms: {coco_ap, ap50, ap75, voc07_map}}`` of an exported lite GFL on the val split."""
    from detkd.experiment import build_val_set, evaluate_detector
    from detkd.infer import with_nms
    from detkd.models.weights import load_model_file

    cfg = load_config("gfl/r18_lite_synthshapes", common_overrides(args, 0))
    val = build_val_set(cfg)
    model, _ = load_model_file(weights)
    out = {}
    for nms in NMS:
        ev = VOCAndCOCO(val, Path(cfg.data.root))
        out[nms] = evaluate_detector(model, val, ev, with_nms(cfg.eval.protocol, nms), max_images=args.max_images,
                                     progress=False)
    return out


def step_ratio(args, teacher: Path, repeats: int) -> dict:
    """Median LD step / (student step + teacher forward) on one training batch, interleaved."""
    from detkd.data.loader import batch_image_sizes
    from detkd.experiment import DetectionTask, build_collate, build_task, build_train_set

    cfg = load_config("ld/ld_lite_synthshapes", [*common_overrides(args, 0), f"distill.teacher_weights={teacher}"])
    torch.manual_seed(0)
    ld_task = build_task(cfg)
    plain = DetectionTask(ld_task.student)
    ds = build_train_set(cfg)
    batch = build_collate(cfg)([ds[i] for i in range(cfg.train.batch_size)])
    sizes = batch_image_sizes(batch)
    opt_d = torch.optim.SGD(ld_task.parameters(), lr=1e-5, momentum=0.9)
    opt_s = torch.optim.SGD(plain.parameters(), lr=1e-5, momentum=0.9)
    ld_task.train()

    def step(task, opt):
        loss = sum(task(batch).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def teacher_fwd():
        with torch.no_grad():
            ld_task.teacher(batch[0], image_sizes=sizes)

    fns = {"distill_step": lambda: step(ld_task, opt_d), "student_step": lambda: step(plain, opt_s),
           "teacher_forward": teacher_fwd}
    times = {k: [] for k in fns}
    for i in range(repeats + 2):  # interleaved; the first two rounds are warm-up
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= 2:
                times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    med["ratio"] = med["distill_step"] / (med["student_step"] + med["teacher_forward"])
    med["repeats"] = repeats
    med["batch"] = list(batch[0].shape)
    return med


def run_seed(args, seed: int, teacher: Path) -> dict:
    """One seed: the baseline (trained, or ``--baseline-weights``) and every fine-tune, each evaluated; the record is
    saved as ``<out>/seed<k>/records.json`` (read back with ``--reuse``)."""
    path = args.out / f"seed{seed}" / "records.json"
    if args.reuse and path.is_file():
        return json.loads(path.read_text())
    t_start = time.time()
    base_ovr = common_overrides(args, seed)
    baseline = args.baseline_weights or train_export(
        "gfl/r18_lite_synthshapes", [*base_ovr, f"train.epochs={args.baseline_epochs}", "name=baseline"])
    ft = [*base_ovr, f"train.epochs={args.epochs}", f"train.init_weights={baseline}"]
    exports, rows = {}, {}
    for row, (name, extra) in FINETUNES.items():
        teach = {"self_ld": baseline, "ta": exports.get("ld")}.get(row, teacher)
        ovr = [*ft, *extra] + ([f"distill.teacher_weights={teach}"] if name.startswith("ld/") else [])
        ovr.append(f"name={row}")
        exports[row] = train_export(name, ovr)
        rows[row] = evaluate(exports[row], args)
        print(f"[kd_gain_ld] seed {seed} {row}: " + json.dumps(rows[row]), file=sys.stderr, flush=True)
    rec = {"seed": seed, "rows": rows, "t_start": t_start, "t_end": time.time()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1))
    return rec


def verdict(per_row: dict) -> dict:
    """The issue's bar on COCO AP: paired gain of ``ld`` over ``control`` with mean > 2 x sample std of the
    per-seed differences, every seed gains, and ``ld`` not below ``kd`` nor ``feat`` (means)."""
    ld, c = np.asarray(per_row["ld"]), np.asarray(per_row["control"])
    diff = ld - c
    std = float(diff.std(ddof=1)) if diff.size > 1 else float("nan")
    return {"paired_gain": diff.tolist(), "mean_gain": float(diff.mean()), "two_sample_std": 2 * std,
            "gain_ok": bool(diff.size > 1 and diff.mean() > 2 * std), "every_seed_gains": bool((diff > 0).all()),
            "not_below_kd": bool(ld.mean() >= np.mean(per_row["kd"])),
            "not_below_feat": bool(ld.mean() >= np.mean(per_row["feat"]))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--teacher-weights", type=Path, default=None)
    ap.add_argument("--seed-list", type=int, nargs="+", help="run these seeds only (default: 0 .. seeds-1)")
    ap.add_argument("--baseline-weights", type=Path, default=None, help="one baseline export fine-tuned by every "
                    "seed (default: train a baseline per seed)")
    ap.add_argument("--reuse", action="store_true", help="read <out>/seed<k>/records.json where it exists")
    ap.add_argument("--teacher-epochs", type=int, default=6)
    ap.add_argument("--baseline-epochs", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=1, help="fine-tune epochs of every row")
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--img-size", type=int, default=0, help="0: the configs' own (and their test protocol)")
    ap.add_argument("--data", type=Path, default=Path("data/synthshapes"), help="SynthShapes root (made if absent)")
    ap.add_argument("--max-iters", type=int, default=0, help=">0: every training stops after N iterations (smoke)")
    ap.add_argument("--max-images", type=int, default=0, help=">0: evaluate the first N val images only (smoke)")
    ap.add_argument("--step-repeats", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("runs/kd_gain_ld"))
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--stem", default="kd_gain_ld")
    args = ap.parse_args(argv)
    t0 = time.time()
    teacher = args.teacher_weights
    if teacher is None:
        teacher = train_export("gfl/r18_half_teacher_synthshapes", [*common_overrides(args, 0),
                                                            f"train.epochs={args.teacher_epochs}", "train.seed=100"])
    seeds = args.seed_list or list(range(args.seeds))
    per_seed = {seed: run_seed(args, seed, teacher) for seed in seeds}
    if args.seed_list and not args.reuse:
        print(f"[kd_gain_ld] seeds {seeds} done; merge with --seeds N --reuse", file=sys.stderr)
        return {}
    records: dict[str, dict[str, list]] = {}  # row -> nms -> [metrics per seed]
    for seed in seeds:
        for row, res in per_seed[seed]["rows"].items():
            for nms in NMS:
                records.setdefault(row, {}).setdefault(nms, []).append(res[nms])
    ratio = step_ratio(args, teacher, args.step_repeats)

    def series(metric: str, nms: str = "greedy") -> dict:
        d = {r: [m[metric] for m in records[r][nms]] for r in ROWS}
        d["self_ld"] = {"control": d["control"], "distilled": [m[metric] for m in records["self_ld"][nms]]}
        d["ta"] = [m[metric] for m in records["ta"][nms]]
        return d

    coco = series("coco_ap")
    result = {"detector": "gfl", "metric": "coco_ap", "seeds": seeds, **coco,
              "ap75": series("ap75"), "voc07_map": series("voc07_map"),
              "cluster_nms": {m: series(m, "cluster-diou-voting") for m in (*METRICS, "ap50")},
              "step_ratio": ratio["ratio"], "step_times": ratio, "verdict": verdict(coco),
              "wall_s": round(time.time() - min([t0] + [p["t_start"] for p in per_seed.values()]), 1),
              "seed_wall_s": {str(k): round(p["t_end"] - p["t_start"], 1) for k, p in per_seed.items()},
              "baseline_weights": str(args.baseline_weights or "per seed"), "commit": git_commit(),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    per_model = {f"{r} ({'voting' if n != 'greedy' else 'greedy'})": {
        k: [m[k] for m in records[r][n]] for k in (*METRICS, "ap50")} for r in FINETUNES for n in NMS}
    base = f"the baseline {args.baseline_weights}" if args.baseline_weights else "each seed's baseline"
    lines = ["# LD on SynthShapes (GFL R18 half width -> R18 quarter width)", "",
             f"seeds {seeds}; fine-tunes of {args.epochs} epoch(s) from {base}; "
             f"max_iters {args.max_iters}, n_train {args.n_train}, n_val {args.n_val}, img {args.img_size or 'as configured'}.", "",
             *kd_gain_table(per_model, ("coco_ap", "ap50", "ap75", "voc07_map"),
                            metric_titles=("AP", "AP50", "AP75", "VOC07 mAP")), "",
             "mean ± population std over seeds, in %; `self_ld` is taught by the seed's own baseline, `ta` by the "
             "`ld` row's export (TA chain).", "",
             *markdown_table(["step ratio", "LD step s", "student step s", "teacher fwd s"],
                             [[f"{ratio['ratio']:.3f}", f"{ratio['distill_step']:.4f}",
                               f"{ratio['student_step']:.4f}", f"{ratio['teacher_forward']:.4f}"]]), "",
             f"verdict (COCO AP, paired): `{json.dumps(result['verdict'])}`", "", f"wall time {result['wall_s']} s"]
    write_results(args.results, args.stem, result, lines)
    print(json.dumps({k: result[k] for k in ("step_ratio", "verdict", "wall_s")}))
    return result


if __name__ == "__main__":
    main()
