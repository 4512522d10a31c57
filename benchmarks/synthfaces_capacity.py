"""Does capacity matter on SynthFaces? The 0.75 teacher against the 0.25 student at an equal budget.

    python benchmarks/synthfaces_capacity.py [--runs runs/capacity] [--data data/synthfaces]

Trains `retinaface/mnet025_synthfaces` and `retinaface/mnet075_tasks_synthfaces` (same recipe, same number of
epochs) unless their run directories already hold a `summary.json`, then writes
`benchmarks/results/synthfaces_capacity.{json,md}` with the final WIDER-protocol AP of each.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from detkd.config import load_config
from detkd.experiment import train
from detkd.reporting import git_commit, write_results

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"student (mnet 0.25)": "retinaface/mnet025_synthfaces",
          "teacher (mnet 0.75 + task convs)": "retinaface/mnet075_tasks_synthfaces"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=Path("runs/capacity"))
    ap.add_argument("--data", type=Path, default=Path("data/synthfaces"))
    args = ap.parse_args()
    rows = {}
    for label, config in MODELS.items():
        name = Path(config).name
        summary = args.runs / name / "summary.json"
        if not summary.is_file():
            cfg = load_config(config, [f"name={name}", f"train.out_dir={args.runs}", f"data.root={args.data}"])
            train(cfg)
        s = json.loads(summary.read_text())
        rows[label] = {"config": config, "epochs": s.get("epochs"), "wall_time_s": s.get("wall_time_s"),
                       **{k: s["eval"][k] for k in ("easy", "medium", "hard")}}
    commit = git_commit()
    gap = {k: rows[list(MODELS)[1]][k] - rows[list(MODELS)[0]][k] for k in ("easy", "medium", "hard")}
    lines = ["| model | epochs | easy AP | medium AP | hard AP | train time (s) |", "|---|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['epochs']} | {100 * r['easy']:.1f} | {100 * r['medium']:.1f} | "
                     f"{100 * r['hard']:.1f} | {r['wall_time_s']:.0f} |")
    lines.append(f"| gap (teacher − student) | | {100 * gap['easy']:+.1f} | {100 * gap['medium']:+.1f} | "
                 f"{100 * gap['hard']:+.1f} | |")
    write_results(RESULTS, "synthfaces_capacity", {"models": rows, "gap": gap, "commit": commit}, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
