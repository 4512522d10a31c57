"""Distillation step time over (student step + teacher forward) for every SynthShapes KD-gain cell, one run.

    python benchmarks/step_ratio.py [--cells fgfi/faster_rcnn_fpn ...] [--repeats 10] [--update-results]

Per cell, on one training batch (batch 8, 320 px, the cell's own SynthShapes config), interleaved rounds of a
distillation step, a student-only step, the teacher's full eval forward and, where the distillation runs less
of the teacher (``DistillTask.teacher_skip``), that shorter forward; medians of this process's CPU time with one
torch thread (``kd_gain_generic.step_time_ratio``). ``ratio`` divides by the full teacher forward (the issue's
bar: <= 1.15); ``ratio_taps`` by the forward the distillation runs: the cost of the method's own adapters,
masks and losses. Teachers: the shipped SynthShapes exports where the cell's teacher is one, else random
weights of the teacher's architecture (the cost does not depend on the weights).

Writes ``benchmarks/results/step_ratio.{json,md}``: ``{"cells": {"<method>/<detector>": {"ratio", "ratio_taps",
"distill_step", "student_step", "teacher_forward", "teacher_taps_forward"?, "teacher_skip", "batch"}}, "repeats",
"threads", "clock", "commit", "wall_s"}`` (seconds). ``--update-results`` also writes each cell's ratio into
its KD-gain result (``step_ratio`` of ``kd_gain_<method>_<detector>.json`` or of the cell in
``kd_gain_generalised.json``, with ``step_ratio_by`` naming this run) and its markdown's step-ratio line.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import kd_gain_generalised as GEN  # noqa: E402  (benchmarks are scripts, not a package)

from detkd.config import load_config  # noqa: E402
from detkd.reporting import git_commit, markdown_table, write_results  # noqa: E402

G = GEN.G
ASSETS = HERE.parent / "detkd" / "assets"
PAIRS = {f"{m}/{d}": pair for (m, d), pair in G.PAIRS.items()}
PAIRS.update({name: G.Pair(cell.student, cell.distill) for name, cell in GEN.CELLS.items()})
# the shipped teacher of each cell where the cell's teacher is exactly it (LD on RetinaNet adds a branch)
TEACHERS = {"fgfi/faster_rcnn_vgg": "faster_rcnn_vgg", "fgfi/faster_rcnn_fpn": "faster_rcnn_fpn",
            "defeat/faster_rcnn_fpn": "faster_rcnn_fpn", "defeat/retinanet": "retinanet", "tdkd/gfl": "gfl"}


def result_files(results: Path, cell: str) -> tuple[Path, Path, str | None]:
    """The KD-gain JSON / markdown holding ``cell``'s step ratio, and its key in a multi-cell file."""
    if cell in GEN.CELLS:
        return results / "kd_gain_generalised.json", results / "kd_gain_generalised.md", cell
    stem = "kd_gain_" + cell.replace("/", "_")
    return results / f"{stem}.json", results / f"{stem}.md", None


def update_results(results: Path, cell: str, timing: dict, by: str) -> bool:
    """Write ``timing["ratio"]`` into ``cell``'s KD-gain result files; False when they do not exist."""
    js, md, key = result_files(results, cell)
    if not js.is_file():
        return False
    data = json.loads(js.read_text())
    target = data["cells"][key] if key else data
    target["step_ratio"], target["step_ratio_by"] = timing["ratio"], by
    js.write_text(json.dumps(data, indent=2) + "\n")
    if md.is_file():
        text = md.read_text()
        line = (f"Step-time ratio distill / (student + teacher forward): {timing['ratio']:.3f} ({by}; "
                f"{timing['ratio_taps']:.3f} over the teacher forward the distillation runs).")
        pattern = r"Step-time ratio distill / \(student \+ teacher forward\): [0-9.]+(?: \([^()]*\))?\.?"
        if key:  # the line after the cell's section heading
            head, sep, rest = text.partition(f"## {key}\n")
            text = head + sep + re.sub(pattern, lambda _: line, rest, count=1)
        else:
            text = re.sub(pattern, lambda _: line, text, count=1)
        md.write_text(text)
    return True


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--repeats", type=int, default=10, help="timed rounds per cell (after 2 warm-up rounds)")
    ap.add_argument("--data-root", type=Path, default=None, help="SynthShapes root (default: the configs' own)")
    ap.add_argument("--results-dir", type=Path, default=HERE / "results")
    ap.add_argument("--update-results", action="store_true",
                    help="also write each ratio into the cell's KD-gain result files")
    ap.add_argument("--from-results", action="store_true", help="measure nothing: with --update-results, take the "
                    "ratios of <results-dir>/step_ratio.json")
    args = ap.parse_args(argv)
    if args.from_results:
        result = json.loads((args.results_dir / "step_ratio.json").read_text())
        if args.update_results:
            by = f"benchmarks/step_ratio.py at {result['commit'][:8]}"
            for name, c in result["cells"].items():
                update_results(args.results_dir, name, c, by)
        return result
    torch.set_num_threads(1)
    t0 = time.time()
    commit = git_commit()
    cells = {}
    for name in args.cells:
        pair = PAIRS[name]
        scfg = load_config(pair.student).data
        data = G.Data(args.data_root or Path(scfg.root), preset=scfg.preset)
        shipped = TEACHERS.get(name)
        teacher = ASSETS / f"synthshapes_teacher_{shipped}.safetensors" if shipped else None
        cells[name] = G.step_time_ratio(pair, data, teacher, args.repeats)
        cells[name]["teacher_weights"] = str(teacher.relative_to(HERE.parent)) if teacher else "random"
        print(f"{name}: ratio {cells[name]['ratio']:.3f}, over the forward it runs {cells[name]['ratio_taps']:.3f}",
              file=sys.stderr)
    result = {"cells": cells, "repeats": args.repeats, "threads": 1, "clock": "process CPU time",
              "commit": commit, "wall_s": time.time() - t0}
    rows = [[name, f"{c['ratio']:.3f}", f"{c['ratio_taps']:.3f}", f"{1000 * c['distill_step']:.0f}",
             f"{1000 * c['student_step']:.0f}", f"{1000 * c['teacher_forward']:.0f}",
             f"{1000 * c['teacher_taps_forward']:.0f}" if "teacher_taps_forward" in c else "same",
             ", ".join(c["teacher_skip"]) or "nothing"] for name, c in cells.items()]
    lines = ["# Distillation step-time ratios (SynthShapes KD-gain cells)", "",
             f"Batch {next(iter(cells.values()))['batch']}, medians of {args.repeats} interleaved rounds, 1 torch "
             f"thread, process CPU time; commit {commit[:8]}. `ratio` = distill step / (student step + full "
             "teacher forward), bar <= 1.15; `ratio_taps` divides by the teacher forward the distillation runs "
             "(skipping the parts no term reads).", "",
             *markdown_table(["cell", "ratio", "ratio_taps", "distill ms", "student ms", "teacher fwd ms",
                              "teacher taps fwd ms", "teacher skips"], rows),
             "", f"Wall time {result['wall_s']:.0f} s."]
    write_results(args.results_dir, "step_ratio", result, lines)
    print("\n".join(lines))
    if args.update_results:
        by = f"benchmarks/step_ratio.py at {commit[:8]}"
        for name, c in cells.items():
            if not update_results(args.results_dir, name, c, by):
                print(f"[step_ratio] {name}: no KD-gain result file to update", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
