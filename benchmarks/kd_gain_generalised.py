"""Do the generalised matrix cells help? TDKD on GFL and LD on RetinaNet on SynthShapes, paired fine-tunes per seed.

    python benchmarks/kd_gain_generalised.py [--cells tdkd/gfl ld/retinanet] [--seeds 0 1 2]
        [--teacher-weights tdkd/gfl=T.safetensors ...] [--teacher-epochs 12] [--baseline-epochs 12]
        [--finetune-epochs 4] [--data-root data/synthshapes] [--out runs/kd_gain_generalised]
        [--results-dir benchmarks/results]
    python benchmarks/kd_gain_generalised.py --smoke --results-dir /tmp/x   # toy sizes, pipeline check only

Cells (method/detector -> student config, distillation config, model options of every model of the cell):

* ``tdkd/gfl``: ``gfl/r18_lite_synthshapes`` <- ``tdkd/gfl_lite_synthshapes`` (lite GFL R34 teacher; TDKD's
  generalisation to towers without hard-negative mining, ``detkd.distill.tdkd``);
* ``ld/retinanet``: ``retinanet/r18_lite_synthshapes`` <- ``ld/retinanet_lite_synthshapes`` (lite RetinaNet R34
  teacher); teacher, baseline and every fine-tune carry the distribution branch (``model.dist_reg_max=16``), so
  the control differs from the distilled run by the distillation alone.

Per cell and seed, the shape of ``benchmarks/kd_gain_ld.py``: one baseline trained from scratch
(``--baseline-epochs``), then identical fine-tunes of it (``--finetune-epochs``, no warm-up, same seed):
``control`` (no distillation), ``distilled`` (the cell's config) and ``feat`` (FitNets hints on p3-p7, 1x1
adapters, unmasked, same teacher). Every model is scored on the val split with the student config's test
protocol: COCO AP / AP75 and VOC07 mAP@0.5 from one inference pass. The teacher is ``--teacher-weights`` for the
cell or trained here (``--teacher-epochs``, seed 100). Also the step-time ratio distill / (student step +
teacher forward), medians of interleaved rounds on one batch (``kd_gain_generic.step_time_ratio``).

Writes ``<results-dir>/kd_gain_generalised.{json,md}``: ``{"metric": "coco_ap", "seeds": [...], "cells":
{"tdkd/gfl": {"control": [...], "distilled": [...], "feat": [...], "ap75": {<same keys>}, "voc07_map": {<same
keys>}, "baseline": {coco_ap, ap75, voc07_map}, "verdict": ..., "step_ratio": ...}, "ld/retinanet": ...},
"wall_s": ...}`` (fractions, lists in seed order). The verdict is the issue's bar on COCO AP: mean paired gain
over the control above twice the sample std of the per-seed gains, every seed gains, not below ``feat``.
``--smoke`` runs every stage at toy size (8 training images, 2 iterations, 2-iteration teachers); its numbers
mean nothing and it refuses to write into benchmarks/results.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from detkd.config import ExperimentConfig, load_config
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
    return cfg


def finetunes(cell: Cell, out: Path, seed: int, baseline: Path, teacher: Path, extra: list[str]) -> dict:
    ovr = [*G.common_overrides(out, seed, [f"train.init_weights={baseline}", "sched.warmup_iters=0", *extra])]
    control = load_config(cell.distill, [*ovr, *cell.model, "name=control"])
    control.distill = None
    distilled = load_config(cell.distill, [*ovr, *cell.model, "name=distilled", f"distill.teacher_weights={teacher}"])
    feat = load_config(cell.distill, [*ovr, *cell.model, "name=feat", f"distill.teacher_weights={teacher}"])
    feat_config(feat)
    return {"control": control, "distilled": distilled, "feat": feat}


def run_cell(name: str, cell: Cell, args, data, size: list[str]) -> dict:
    out = args.out / name.replace("/", "_")
    teacher = args.teacher_weights.get(name)
    if teacher is None:
        t_len = [] if args.smoke else [f"train.epochs={args.teacher_epochs}"]
        teacher = G.train_export(teacher_config(cell, [*G.common_overrides(out / "teacher", 100, [*size, *t_len]),
                                                       "name=teacher"]), data)
    protocol = load_config(cell.student).eval.protocol
    scores = {r: {m: [] for m in METRICS} for r in ("baseline", *RUNS)}
    for seed in args.seeds:
        s_out = out / f"seed{seed}"
        b_len = [] if args.smoke else [f"train.epochs={args.baseline_epochs}"]
        baseline = G.train_export(load_config(cell.student, [*G.common_overrides(s_out, seed, [*size, *b_len]),
                                                             *cell.model, "name=baseline"]), data)
        exports = {"baseline": baseline}
        f_len = [] if args.smoke else [f"train.epochs={args.finetune_epochs}"]
        for row, cfg in finetunes(cell, s_out, seed, baseline, teacher, [*size, *f_len]).items():
            exports[row] = G.train_export(cfg, data)
        for row, w in exports.items():
            for k, v in evaluate(w, protocol, data).items():
                scores[row][k].append(v)
    timing_pair = G.Pair(cell.student, cell.distill)
    timing = G.step_time_ratio(timing_pair, data, teacher, 2 if args.smoke else args.timing_repeats,
                               *((2, 160) if args.smoke else ()))
    res = {r: scores[r]["coco_ap"] for r in RUNS}
    res.update({m: {r: scores[r][m] for r in RUNS} for m in ("ap75", "voc07_map")})
    res["baseline"] = scores["baseline"]
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
        lines += [f"## {name}", "", *markdown_table(
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


def _teacher_arg(text: str) -> tuple[str, Path]:
    cell, sep, path = text.partition("=")
    if not sep or cell not in CELLS:
        raise argparse.ArgumentTypeError(f"{text!r}: use CELL=PATH with CELL one of {', '.join(CELLS)}")
    return cell, Path(path)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher-weights", type=_teacher_arg, nargs="*", default=[], metavar="CELL=PATH")
    ap.add_argument("--teacher-epochs", type=int, default=12)
    ap.add_argument("--baseline-epochs", type=int, default=12)
    ap.add_argument("--finetune-epochs", type=int, default=4)
    ap.add_argument("--data-root", type=Path, default=Path("data/synthshapes"))
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--timing-repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("runs/kd_gain_generalised"))
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--smoke", action="store_true", help="toy sizes end to end (pipeline check; meaningless numbers)")
    args = ap.parse_args(argv)
    args.teacher_weights = dict(args.teacher_weights)
    for cell, path in args.teacher_weights.items():
        if not path.is_file():
            ap.error(f"--teacher-weights {cell}={path}: not a file")
    if args.smoke and args.results_dir.resolve() == RESULTS.resolve():
        ap.error("--smoke results must not go to benchmarks/results: give --results-dir")
    t0 = time.time()
    data = G.Data(args.data_root, args.n_train, args.n_val)
    size: list[str] = []
    if args.smoke:
        data = G.Data(args.out / "synthshapes", n_train=8, n_val=4, max_long=224)
        size = ["data.img_size=160", "train.batch_size=2", "train.max_iters=2", "train.log_every=1"]
    cells = {name: run_cell(name, CELLS[name], args, data, size) for name in args.cells}
    result = {"metric": "coco_ap", "seeds": list(args.seeds), "cells": cells, "wall_s": time.time() - t0,
              "commit": git_commit()}
    schedule = ("smoke: 2 iterations per stage" if args.smoke else
                f"teachers {args.teacher_epochs} epochs (unless given), baseline {args.baseline_epochs} epochs from "
                f"scratch per seed, then {args.finetune_epochs} epochs per fine-tune")
    lines = markdown(result, schedule, args.smoke)
    js, md = write_results(args.results_dir, "kd_gain_generalised", result, lines)
    print("\n".join(lines))
    print(f"wrote {js} and {md}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
