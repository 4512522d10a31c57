"""Do the generalised matrix cells help? TDKD on GFL and LD on RetinaNet on SynthShapes, paired fine-tunes per seed.

    python benchmarks/kd_gain_generalised.py [--cells tdkd/gfl ld/retinanet] [--seeds 0 1 2]
        [--teacher-weights CELL=T.safetensors ...] [--baseline-weights CELL=B.safetensors ...]
        [--finetune-epochs 4] [--finetune-iters N] [--branch-iters 300] [--seed-list 0 1 | --reuse]
        [--teacher-epochs 12] [--baseline-epochs 12] [--data-root DIR] [--out runs/kd_gain_generalised]
    python benchmarks/kd_gain_generalised.py --smoke --results-dir /tmp/x   # toy sizes, pipeline check only

Cells (method/detector -> student config, distillation config, model options of every student of the cell):

* ``tdkd/gfl``: ``gfl/r18_lite_synthshapes`` <- ``tdkd/gfl_lite_synthshapes`` (the half-width GFL R18 teacher,
  shipped as ``detkd/assets/synthshapes_teacher_gfl``; TDKD's generalisation to towers without hard-negative
  mining, ``detkd.distill.tdkd``);
* ``ld/retinanet``: ``retinanet/r18_lite_synthshapes`` <- ``ld/retinanet_lite_synthshapes`` (the half-width
  RetinaNet R18 teacher, shipped as ``detkd/assets/synthshapes_teacher_retinanet``); teacher, baseline and every
  fine-tune carry the distribution branch (``model.dist_reg_max=16``), so the control differs from the distilled
  run by the distillation alone. A given teacher without the branch gets it added and trained alone
  (``--branch-iters`` SGD steps on its DFL, the rest frozen and in eval mode: its detections stay the given
  model's); a given baseline without it gets it added at its fresh init (decoding keeps RetinaNet's deltas, so
  the baseline's detections are unchanged and every fine-tune starts from the same weights).

Per cell and seed, the shape of ``benchmarks/kd_gain_ld.py``: one baseline (trained from scratch for
``--baseline-epochs``, or the cell's ``--baseline-weights`` shared by every seed), then identical fine-tunes of
it (``--finetune-epochs``, optionally cut at ``--finetune-iters``, no warm-up, same seed): ``control`` (no
distillation), ``distilled`` (the cell's config) and ``feat`` (FitNets hints on p3-p7, 1x1 adapters, unmasked,
same teacher). Every model (and the teacher) is scored on the val split with the student config's test
protocol: COCO AP / AP75 and VOC07 mAP@0.5 from one inference pass. The teacher is the cell's
``--teacher-weights`` or trained here (``--teacher-epochs``, seed 100). Seeds can run in separate processes
(``--seed-list``, each saving ``<out>/<cell>/seed<k>/records.json``); a last call with ``--reuse`` merges them.
Also the step-time ratio distill / (student step + teacher forward), medians of interleaved rounds on one batch
(``kd_gain_generic.step_time_ratio``).

Writes ``<results-dir>/kd_gain_generalised.{json,md}``: ``{"metric": "coco_ap", "seeds": [...], "cells":
{"tdkd/gfl": {"control": [...], "distilled": [...], "feat": [...], "ap75": {<same keys>}, "voc07_map": {<same
keys>}, "baseline": {coco_ap, ap75, voc07_map}, "teacher": {...}, "verdict": ..., "step_ratio": ...},
"ld/retinanet": ...}, "wall_s": ...}`` (fractions, lists in seed order). The verdict is the issue's bar on COCO
AP: mean paired gain over the control above twice the sample std of the per-seed gains, every seed gains, not
below ``feat``. ``--smoke`` runs every stage at toy size (8 training images, 2 iterations, 2-iteration teachers);
its numbers mean nothing and it refuses to write into benchmarks/results.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from detkd.config import ExperimentConfig, load_config
from detkd.pretrain_trunk import trunk_for
from detkd.reporting import git_commit, markdown_table, write_results

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = ("control", "distilled", "feat")
METRICS = ("coco_ap", "ap75", "voc07_map")
FEAT_TAPS = ["p3", "p4", "p5", "p6", "p7"]


def _generic():
    """``benchmarks/kd_gain_generic.py`` (training, evaluation data, step timing, verdict arithmetic)."""
    spec = importlib.util.spec_from_file_location("kd_gain_generic", HERE / "kd_gain_generic.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses resolve their module through sys.modules
    spec.loader.exec_module(mod)
    return mod


G = _generic()


@dataclass(frozen=True)
class Cell:
    student: str  # the baseline's config
    distill: str  # the cell's SynthShapes distillation config
    model: list[str] = field(default_factory=list)  # overrides every model of the cell gets (student side)


CELLS = {
    "tdkd/gfl": Cell("gfl/r18_lite_synthshapes", "tdkd/gfl_lite_synthshapes"),
    "ld/retinanet": Cell("retinanet/r18_lite_synthshapes", "ld/retinanet_lite_synthshapes", ["model.dist_reg_max=16"]),
}


class Scores(G.VocAndCoco):
    """``kd_gain_generic``'s one-pass VOC07 + COCO evaluator, reporting AP75 too."""

    def evaluate(self) -> dict:
        c = self.coco.evaluate()
        return {"voc07_map": float(self.voc.evaluate()["mAP"]), "coco_ap": float(c["AP"]), "ap75": float(c["AP75"])}


def evaluate(weights: Path, protocol: str, data) -> dict:
    from detkd.experiment import evaluate_detector
    from detkd.models.weights import load_model_file

    model, _ = load_model_file(weights)
    val = data.val_set()
    res = evaluate_detector(model, val, Scores(val, data.root / "annotations" / "instances_val.json"), protocol,
                            progress=False)
    print(f"[kd_gain_generalised] {weights}: " + json.dumps(res), file=sys.stderr, flush=True)
    return res


def feat_config(cfg: ExperimentConfig) -> None:
    """Replace ``cfg.distill``'s method by unmasked FitNets hints on p3-p7 (same teacher)."""
    from detkd.distill.distiller import DistillConfig
    from detkd.distill.feat import FeatConfig

    d = cfg.distill
    cfg.distill = DistillConfig(teacher=d.teacher, teacher_weights=d.teacher_weights, methods=["feat"],
                                feat=FeatConfig(student_taps=list(FEAT_TAPS), teacher_taps=list(FEAT_TAPS)))


def teacher_config(cell: Cell, overrides: list[str]) -> ExperimentConfig:
    """The student config training the cell's teacher architecture (``distill.teacher`` of the cell's config)."""
    cfg = load_config(cell.student, overrides)
    cfg.model = load_config(cell.distill).distill.teacher
    cfg.train.backbone_init = trunk_for(cfg.model)  # the student's trunk file does not fit the teacher's width
    return cfg


def finetunes(cell: Cell, out: Path, seed: int, baseline: Path, teacher: Path, extra: list[str]) -> dict:
    ovr = [*G.common_overrides(out, seed, [f"train.init_weights={baseline}", "sched.warmup_iters=0", *extra])]
    control = load_config(cell.distill, [*ovr, *cell.model, "name=control"])
    control.distill = None
    distilled = load_config(cell.distill, [*ovr, *cell.model, "name=distilled", f"distill.teacher_weights={teacher}"])
    feat = load_config(cell.distill, [*ovr, *cell.model, "name=feat", f"distill.teacher_weights={teacher}"])
    feat_config(feat)
    return {"control": control, "distilled": distilled, "feat": feat}


def with_branch(src: Path, model_cfg, out: Path, seed: int = 0) -> Path:
    """``src`` (an export trained without the cell's added branch, e.g. a shipped model) rebuilt as ``model_cfg``:
    every trained weight loaded, the keys that only ``model_cfg`` has (the branch) at their fresh init (drawn
    after ``torch.manual_seed(seed)``). An export that already fits is returned as it is."""
    from detkd.models.weights import check_state, load_state_file, save_model_file
    from detkd.registry import build_model

    torch.manual_seed(seed)
    model = build_model(model_cfg)
    sd = load_state_file(src)
    added = tuple(k for k in model.state_dict() if k not in sd)
    if not added:
        return src
    check_state(model, sd, src, allow_missing=added)  # anything else missing, unexpected or misshapen: refuse
    model.load_state_dict(sd, strict=False)
    save_model_file(model, out, source={"from": str(src), "added_keys": list(added)})
    print(f"[kd_gain_generalised] {src} + {len(added)} fresh branch tensors -> {out}", flush=True)
    return out


def train_branch(weights: Path, cfg: ExperimentConfig, data, iters: int, out: Path) -> Path:
    """Train only the parameters ``weights`` lacks a trained value for (the added ``bbox_dist`` branch) for
    ``iters`` SGD steps on the branch's own loss (``task.dfl``), everything else frozen and in eval mode (BN
    statistics kept), so the teacher's detections stay exactly those of the shipped model."""
    from itertools import cycle

    from torch.utils.data import DataLoader

    from detkd.data.loader import batch_image_sizes
    from detkd.experiment import build_collate
    from detkd.models.weights import load_model_file, read_card, save_model_file

    if out.is_file():
        return out
    model, _ = load_model_file(weights)
    added = tuple(read_card(weights).get("source", {}).get("added_keys", []))
    model.requires_grad_(False)
    params = [p for n, p in model.named_parameters() if n in added]
    if not params:
        raise ValueError(f"{weights}: no added branch parameters to train")
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=cfg.optim.lr, momentum=0.9)
    g = torch.Generator().manual_seed(cfg.train.seed)
    loader = DataLoader(data.train_set(cfg), batch_size=cfg.train.batch_size, shuffle=True, generator=g,
                        collate_fn=build_collate(cfg))
    t0 = time.time()
    for it, batch in zip(range(iters), cycle(loader)):
        images, targets, _ = batch
        loss = model(images, targets, image_sizes=batch_image_sizes(batch)).losses["task.dfl"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 50 == 0 or it == iters - 1:
            print(f"[kd_gain_generalised] branch {it + 1}/{iters}: task.dfl {loss.item():.4f}", flush=True)
    save_model_file(model.eval(), out, source={"from": str(weights), "branch_iters": iters})
    print(f"[kd_gain_generalised] branch trained in {time.time() - t0:.0f}s -> {out}", flush=True)
    return out


def cell_teacher(name: str, cell: Cell, args, data, size: list[str], out: Path) -> Path:
    """The cell's teacher: ``--teacher-weights`` (its added branch trained here when it lacks one) or trained here."""
    teacher = args.teacher_weights.get(name)
    if teacher is None:
        t_len = [] if args.smoke else [f"train.epochs={args.teacher_epochs}"]
        return G.train_export(teacher_config(cell, [*G.common_overrides(out / "teacher", 100, [*size, *t_len]),
                                                    "name=teacher"]), data)
    tcfg = load_config(cell.distill, [*G.common_overrides(out / "teacher", 100, size)])
    branched = with_branch(teacher, tcfg.distill.teacher, out / "teacher" / "with_branch.safetensors", seed=100)
    if branched == teacher:
        return teacher
    iters = 2 if args.smoke else args.branch_iters
    return train_branch(branched, tcfg, data, iters, out / "teacher" / f"branch{iters}.safetensors")


def run_seed(name: str, cell: Cell, args, data, size: list[str], seed: int, teacher: Path, protocol: str) -> dict:
    """One seed of a cell: the baseline (trained, or the cell's ``--baseline-weights`` with any added branch
    fresh) and the three fine-tunes, each evaluated; saved as ``seed<k>/records.json``, read back with --reuse."""
    s_out = args.out / name.replace("/", "_") / f"seed{seed}"
    path = s_out / "records.json"
    if args.reuse and path.is_file():
        print(f"[kd_gain_generalised] {name} seed {seed}: reusing {path}", flush=True)
        return json.loads(path.read_text())
    given = args.baseline_weights.get(name)
    if given is not None:
        baseline = with_branch(given, load_config(cell.student, cell.model).model,
                               s_out / "baseline_with_branch.safetensors", seed=seed)
    else:
        b_len = [] if args.smoke else [f"train.epochs={args.baseline_epochs}"]
        baseline = G.train_export(load_config(cell.student, [*G.common_overrides(s_out, seed, [*size, *b_len]),
                                                             *cell.model, "name=baseline"]), data)
    exports = {"baseline": baseline}
    f_len = G.finetune_length(args)[0]
    for row, cfg in finetunes(cell, s_out, seed, baseline, teacher, [*size, *f_len]).items():
        exports[row] = G.train_export(cfg, data)
    record = {row: evaluate(w, protocol, data) for row, w in exports.items()}
    s_out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    return record


def run_cell(name: str, cell: Cell, args, data, size: list[str]) -> dict | None:
    out = args.out / name.replace("/", "_")
    teacher = cell_teacher(name, cell, args, data, size, out)
    protocol = load_config(cell.student).eval.protocol
    scores = {r: {m: [] for m in METRICS} for r in ("baseline", *RUNS)}
    for seed in args.seed_list or args.seeds:
        for row, res in run_seed(name, cell, args, data, size, seed, teacher, protocol).items():
            for k, v in res.items():
                scores[row][k].append(v)
    if args.seed_list and not args.reuse:
        return None
    timing_pair = G.Pair(cell.student, cell.distill)
    timing = G.step_time_ratio(timing_pair, data, teacher, 2 if args.smoke else args.timing_repeats,
                               *((2, 160) if args.smoke else ()))
    res = {r: scores[r]["coco_ap"] for r in RUNS}
    res.update({m: {r: scores[r][m] for r in RUNS} for m in ("ap75", "voc07_map")})
    res["baseline"] = scores["baseline"]
    res["teacher"] = evaluate(teacher, protocol, data)
    res["teacher_weights"] = str(teacher)
    res["verdict"] = G.verdict(*(scores[r]["coco_ap"] for r in RUNS))
    res["step_ratio"], res["step_times"] = timing["ratio"], timing
    return res


def markdown(result: dict, schedule: str, smoke: bool) -> list[str]:
    lines = ["# Generalised matrix cells on SynthShapes: TDKD on GFL, LD on RetinaNet", ""]
    if smoke:
        lines += ["**SMOKE RUN: toy data and 2-iteration schedules; the numbers below prove the pipeline only.**", ""]
    lines += [f"seeds {result['seeds']}; {schedule}. Scores in %, mean ± sample std over seeds.", ""]
    ok = {True: "yes", False: "NO"}
    for name, res in result["cells"].items():
        rows = []
        for k, seed in enumerate(result["seeds"]):
            rows.append([seed, *(f"{100 * res[r][k]:.2f}" for r in RUNS),
                         *(f"{100 * res['ap75'][r][k]:.2f}" for r in RUNS),
                         *(f"{100 * res['voc07_map'][r][k]:.2f}" for r in RUNS)])
        rows.append(["mean", *(G.fmt(res[r]) for r in RUNS), *(G.fmt(res["ap75"][r]) for r in RUNS),
                     *(G.fmt(res["voc07_map"][r]) for r in RUNS)])
        m = name.split("/")[0]
        t, b = res["teacher"], res["baseline"]
        kept = (f" Kept from the earlier run at commit {res['kept_from'][:8]} (its own teacher, baseline and "
                "schedule; not re-run with this one's)." if res.get("kept_from") else "")
        lines += [f"## {name}", "", f"Teacher `{res['teacher_weights']}`: AP {100 * t['coco_ap']:.2f}, VOC07 mAP "
                  f"{100 * t['voc07_map']:.2f}; baseline AP {G.fmt(b['coco_ap'])}, mAP {G.fmt(b['voc07_map'])}.{kept}", "",
                  *markdown_table(
            ["seed", "control AP", f"{m} AP", "feat AP", "control AP75", f"{m} AP75", "feat AP75",
             "control mAP", f"{m} mAP", "feat mAP"], rows)]
        v = res["verdict"]
        lines += ["", "COCO AP gain over the control per seed " + ", ".join(f"{100 * g:+.2f}" for g in v["gains"])
                  + f"; mean {100 * v['mean_gain']:+.2f}, 2 × sample std {200 * v['gain_std']:.2f} "
                  f"(above: {ok[v['above_2std']]}); every seed gains: {ok[v['every_seed_gains']]}; not below feat: "
                  f"{ok[v['not_below_feat']]}. Bar met: "
                  f"{ok[v['above_2std'] and v['every_seed_gains'] and v['not_below_feat']]}.",
                  "", f"Step-time ratio distill / (student + teacher forward): {res['step_ratio']:.3f}.", ""]
    lines += [f"Wall time {result['wall_s']:.0f} s; commit {git_commit()[:8]}."]
    return lines


def _cell_path(text: str) -> tuple[str, Path]:
    cell, sep, path = text.partition("=")
    if not sep or cell not in CELLS:
        raise argparse.ArgumentTypeError(f"{text!r}: use CELL=PATH with CELL one of {', '.join(CELLS)}")
    return cell, Path(path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    ap.add_argument("--keep-other-cells", action="store_true", help="keep the results file's rows of the cells not "
                    "run now (marked kept_from: that run's commit)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seed-list", type=int, nargs="+", help="run only these seeds of the cells and save their "
                    "records (one process per core); a last call with --seeds ... --reuse merges and writes")
    ap.add_argument("--reuse", action="store_true", help="read <out>/<cell>/seed<k>/records.json where it exists")
    ap.add_argument("--teacher-weights", type=_cell_path, nargs="*", default=[], metavar="CELL=PATH",
                    help="a trained teacher export per cell (e.g. the shipped one); a branch the cell adds "
                    "(ld/retinanet's box_dist) is trained here for --branch-iters steps, the rest frozen")
    ap.add_argument("--baseline-weights", type=_cell_path, nargs="*", default=[], metavar="CELL=PATH",
                    help="one trained baseline export per cell fine-tuned by every seed (e.g. the shipped one; "
                    "an added branch starts at its fresh init in every run), instead of a baseline per seed")
    ap.add_argument("--branch-iters", type=int, default=300, help="steps training a given teacher's added branch")
    ap.add_argument("--teacher-epochs", type=int, default=12)
    ap.add_argument("--baseline-epochs", type=int, default=12)
    ap.add_argument("--finetune-epochs", type=int, default=4)
    ap.add_argument("--finetune-iters", type=int, default=0, help=">0: every fine-tune stops after N iterations "
                    "and its cosine schedule decays over those N (sched.total_iters; runs before 2026-12-07 18:20 "
                    "cut a --finetune-epochs cosine at N instead)")
    ap.add_argument("--data-root", type=Path, default=None, help="SynthShapes root (default: the configs' own)")
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--timing-repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("runs/kd_gain_generalised"))
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--smoke", action="store_true", help="toy sizes end to end (pipeline check; meaningless numbers)")
    args = ap.parse_args(argv)
    args.teacher_weights = dict(args.teacher_weights)
    args.baseline_weights = dict(args.baseline_weights)
    for flag, given in (("--teacher-weights", args.teacher_weights), ("--baseline-weights", args.baseline_weights)):
        for cell, path in given.items():
            if not path.is_file():
                ap.error(f"{flag} {cell}={path}: not a file")
    if args.smoke and args.results_dir.resolve() == RESULTS.resolve():
        ap.error("--smoke results must not go to benchmarks/results: give --results-dir")
    t0 = time.time()
    scfg = load_config(CELLS[args.cells[0]].student).data
    data = G.Data(args.data_root or Path(scfg.root), args.n_train, args.n_val, preset=scfg.preset)
    size: list[str] = []
    if args.smoke:
        data = G.Data(args.out / "synthshapes", n_train=8, n_val=4, max_long=224, preset=scfg.preset)
        size = ["data.img_size=160", "train.batch_size=2", "train.max_iters=2", "train.log_every=1"]
    cells = {name: run_cell(name, CELLS[name], args, data, size) for name in args.cells}
    if args.seed_list and not args.reuse:
        print(f"[kd_gain_generalised] seeds {args.seed_list} done; merge with --seeds ... --reuse", file=sys.stderr)
        return {}
    result = {"metric": "coco_ap", "seeds": list(args.seeds), "cells": cells, "wall_s": time.time() - t0,
              "commit": git_commit()}
    earlier = args.results_dir / "kd_gain_generalised.json"
    if args.keep_other_cells and earlier.is_file():  # the cells not run now, as the file had them
        have = json.loads(earlier.read_text())
        kept = {c: {**r, "kept_from": have.get("commit", "an earlier run")}
                for c, r in have.get("cells", {}).items() if c not in cells}
        result["cells"] = {**kept, **cells}
    base = ("the given baselines (" + ", ".join(f"{c}: {p}" for c, p in args.baseline_weights.items()) + ")"
            if args.baseline_weights else f"baseline {args.baseline_epochs} epochs from scratch per seed")
    length = G.finetune_length(args)[1]
    schedule = ("smoke: 2 iterations per stage" if args.smoke else
                f"teachers {args.teacher_epochs} epochs unless given (a given teacher's added branch trained "
                f"{args.branch_iters} steps), {base}, then {length} per fine-tune (no warm-up), data {data.root} "
                f"(preset {data.preset})")
    lines = markdown(result, schedule, args.smoke)
    js, md = write_results(args.results_dir, "kd_gain_generalised", result, lines)
    print("\n".join(lines))
    print(f"wrote {js} and {md}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
