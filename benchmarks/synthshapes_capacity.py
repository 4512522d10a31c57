"""Does capacity matter on SynthShapes? Per detector family, a teacher and a student with the same recipe.

    python benchmarks/synthshapes_capacity.py [--families retinanet gfl ...] [--epochs N] [--img-size S]
        [--n-train N --n-val N] [--data DIR] [--runs DIR] [--stem synthshapes_capacity] [--report-only]

For each family the student config (the ``*_lite_synthshapes`` one) and the teacher config (same data, optimiser,
schedule and epochs; a bigger trunk, FPN and head) are trained with ``detkd.experiment.train`` unless their run
directory already holds a ``summary.json`` from the same settings; each run ends with VOC07 mAP and COCO AP on
the val split (``eval.also=[coco]``). Writes ``benchmarks/results/<stem>.json`` as
``{"rows": [{"family", "role", "model", "epochs", "voc07_map", "coco_ap", "params", "train_s"}, ...]}``
(mAP and AP as fractions; ``train_s`` the training wall time on this machine) and ``<stem>.md``, the same table
plus GFLOPs and the median CPU latency of one forward at ``img_size`` x ``img_size`` and the teacher - student
gap. The run's settings are stated in the md only (the JSON keeps exactly ``rows``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from detkd.config import load_config
from detkd.demo.common import model_cost
from detkd.experiment import train
from detkd.registry import build_model
from detkd.reporting import git_commit, markdown_table, write_results

RESULTS = Path(__file__).resolve().parent / "results"
# family -> (student config, teacher config); cheapest family first
FAMILIES = {
    "faster_rcnn_vgg": ("faster_rcnn/vgg_lite_synthshapes", "faster_rcnn/vgg16_teacher_synthshapes"),
    "retinanet": ("retinanet/r18_lite_synthshapes", "retinanet/r18_half_teacher_synthshapes"),
    "gfl": ("gfl/r18_lite_synthshapes", "gfl/r18_half_teacher_synthshapes"),
    "faster_rcnn_fpn": ("faster_rcnn/fpn_lite_synthshapes", "faster_rcnn/fpn_r18_half_teacher_synthshapes"),
}
ROW_KEYS = ("family", "role", "model", "epochs", "voc07_map", "coco_ap", "params", "train_s")


def overrides(args, name: str) -> list[str]:
    out = [f"name={name}", f"train.out_dir={args.runs}", f"data.n_train={args.n_train}", f"data.n_val={args.n_val}",
           "train.progress=true"] + ([f"data.root={args.data}"] if args.data else [])
    if args.img_size:
        out += [f"data.img_size={args.img_size}", f"eval.protocol={args.protocol or f'torchvision-{args.img_size}'}"]
    elif args.protocol:
        out.append(f"eval.protocol={args.protocol}")
    if args.max_long:
        out.append(f"data.max_long={args.max_long}")
    if args.epochs:
        out.append(f"train.epochs={args.epochs}")
    if args.batch_size:
        out.append(f"train.batch_size={args.batch_size}")
    if args.warmup >= 0:
        out.append(f"sched.warmup_iters={args.warmup}")
    return out + list(args.set)


def run_one(args, family: str, role: str, config: str) -> dict | None:
    """The row of one run (trained here unless done; ``None`` with ``--report-only`` when it was never run)."""
    name = f"{family}_{role}"
    cfg = load_config(config, overrides(args, name) + (list(args.teacher_set) if role == "teacher" else []))
    summary = cfg.run_dir / "summary.json"
    done = summary.is_file() and json.loads((cfg.run_dir / "config.json").read_text()).get("train", {}).get(
        "epochs") == cfg.train.epochs
    if not done and args.report_only:
        return None
    if not done or args.retrain:
        cfg.train.overwrite = True  # this benchmark's own run directory: a stale or partial run is replaced
        train(cfg)
    s = json.loads(summary.read_text())
    ev = s.get("eval") or {}
    if "mAP" not in ev or "coco/AP" not in ev:
        raise SystemExit(f"{summary}: no VOC07 mAP / COCO AP in 'eval' ({sorted(ev)[:8]}); was it evaluated?")
    cost = model_cost(build_model(cfg.model), cfg.data.img_size)
    row = {"family": family, "role": role, "model": cfg.model.name, "epochs": int(cfg.train.epochs),
           "voc07_map": float(ev["mAP"]), "coco_ap": float(ev["coco/AP"]), "params": int(cost["params"]),
           "train_s": float(s.get("wall_time_s") or 0.0)}
    return {**row, "_gflops": cost["gflops"], "_latency_ms": cost["latency_ms"], "_config": config,
            "_img_size": cfg.data.img_size, "_protocol": cfg.eval.protocol}


def table(rows: list[dict], settings: dict) -> list[str]:
    body = [[r["family"], r["role"], r["model"], r["epochs"], f"{100 * r['voc07_map']:.1f}",
             f"{100 * r['coco_ap']:.1f}", f"{r['params'] / 1e6:.2f}", f"{r['_gflops']:.2f}",
             f"{r['_latency_ms']:.0f}", f"{r['train_s']:.0f}"] for r in rows]
    lines = [f"# SynthShapes capacity: teacher vs student ({settings['commit'][:7]})", "",
             "Same recipe and epochs per family; VOC07 11-point mAP@0.5 and COCO AP@[.5:.95] on the val split "
             f"(test protocol in the settings). Settings: {json.dumps({k: v for k, v in settings.items() if k != 'commit'})}."
             f" GFLOPs and latency: one eval-mode forward of a square image of the training size {settings['img_size']} on this "
             "machine's CPU (shared, loaded: latencies are indicative).", ""]
    lines += markdown_table(["family", "role", "model", "epochs", "VOC07 mAP", "COCO AP", "params (M)", "GFLOPs",
                             "CPU latency (ms)", "train (s)"], body)
    lines += ["", "| family | teacher − student VOC07 mAP | teacher < 90 | gap ≥ 5 |", "|---|---|---|---|"]
    for fam in dict.fromkeys(r["family"] for r in rows):
        by = {r["role"]: r for r in rows if r["family"] == fam}
        if {"teacher", "student"} <= set(by):
            gap = 100 * (by["teacher"]["voc07_map"] - by["student"]["voc07_map"])
            lines.append(f"| {fam} | {gap:+.1f} | {'yes' if by['teacher']['voc07_map'] < 0.9 else 'no'} | "
                         f"{'yes' if gap >= 5 else 'no'} |")
    return lines


def merged(args, rows: list[dict]) -> list[dict]:
    """``rows`` plus the earlier file's rows of every (family, role) not in ``rows``, in ``FAMILIES`` order; their
    GFLOPs and latency come from the earlier markdown table (measured with their runs), else are measured now."""
    path = args.out_dir / f"{args.stem}.json"
    have = {(r["family"], r["role"]) for r in rows}
    old = json.loads(path.read_text())["rows"] if path.is_file() else []
    costs = {}
    md = path.with_suffix(".md")
    for line in md.read_text().splitlines() if md.is_file() else []:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[1] in ("student", "teacher"):
            try:
                costs[cells[0], cells[1]] = {"gflops": float(cells[7]), "latency_ms": float(cells[8])}
            except ValueError:
                continue
    for r in old:
        if (r["family"], r["role"]) in have or r["family"] not in FAMILIES:
            continue
        cfg = load_config(FAMILIES[r["family"]][0 if r["role"] == "student" else 1], overrides(args, "merge"))
        cost = costs.get((r["family"], r["role"])) or model_cost(build_model(cfg.model), cfg.data.img_size)
        rows.append({**r, "_gflops": cost["gflops"], "_latency_ms": cost["latency_ms"],
                     "_img_size": cfg.data.img_size, "_protocol": cfg.eval.protocol})
    order = {fam: i for i, fam in enumerate(FAMILIES)}
    return sorted(rows, key=lambda r: (order[r["family"]], r["role"] != "student"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--roles", nargs="+", default=["student", "teacher"], choices=["student", "teacher"])
    ap.add_argument("--epochs", type=int, default=0, help="0: the configs' own")
    ap.add_argument("--batch-size", type=int, default=0, help="0: the configs' own")
    ap.add_argument("--warmup", type=int, default=-1, help="sched.warmup_iters (-1: the configs' own)")
    ap.add_argument("--img-size", type=int, default=0, help="0: the configs' own (with their test protocol)")
    ap.add_argument("--max-long", type=int, default=0, help="0: the configs' own")
    ap.add_argument("--protocol", default="", help="test protocol (default: the configs' own, or torchvision-<img "
                    "size> with --img-size)")
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--data", type=Path, default=None, help="SynthShapes root (default: the configs' own)")
    ap.add_argument("--runs", type=Path, default=Path("runs/synthshapes_capacity"))
    ap.add_argument("--stem", default="synthshapes_capacity")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--set", nargs="*", default=[], help="more a.b=c overrides for every run")
    ap.add_argument("--teacher-set", nargs="*", default=[], help="a.b=c overrides for the teachers only (e.g. a "
                    "narrower teacher for a calibration run: model.width=0.25)")
    ap.add_argument("--retrain", action="store_true", help="train even when a summary.json exists")
    ap.add_argument("--report-only", action="store_true", help="train nothing: tabulate the runs that exist and "
                    "name the missing ones in the md")
    ap.add_argument("--merge", action="store_true", help="keep the rows of <out-dir>/<stem>.json for the families "
                    "and roles not run now (their GFLOPs and latency from the earlier md table, else measured now)")
    ap.add_argument("--note", default="", help="a line for the md on how the runs were made (threads, load)")
    args = ap.parse_args()
    asked = [(fam, role) for fam in args.families for role in args.roles]
    found = [run_one(args, fam, role, FAMILIES[fam][0 if role == "student" else 1]) for fam, role in asked]
    rows = [r for r in found if r is not None]
    if args.merge:
        rows = merged(args, rows)
    missing = [f"{fam} {role}" for (fam, role), r in zip(asked, found) if r is None]
    settings = {"commit": git_commit(), "img_size": sorted({r["_img_size"] for r in rows}),
                "max_long": args.max_long or "config", "n_train": args.n_train,
                "protocol": sorted({r["_protocol"] for r in rows}), "n_val": args.n_val, "epochs": args.epochs or "config",
                "batch_size": args.batch_size or "config", "extra": args.set,
                "teacher_extra": args.teacher_set}
    lines = table(rows, settings) + ([""] + [f"Note: {args.note}"] if args.note else [])
    if missing:
        lines += ["", "Not run (no row): " + ", ".join(missing) + "."]
    write_results(args.out_dir, args.stem, {"rows": [{k: r[k] for k in ROW_KEYS} for r in rows]}, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
