"""Speed of the WIDER FACE evaluator on the real val GT with a synthetic prediction set.

~100 boxes per image on all 3,226 val images (jittered GT boxes + random false positives, random scores),
timed as: in-memory ``process()`` + ``evaluate()``; ``write_txt`` of every file; ``read_pred_dir``; and the
whole ``evaluate_dir``. Writes benchmarks/results/eval_widerface_speed.{json,md}.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_widerface_speed.py [--boxes 100] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from detkd.data.widerface import load_gt
from detkd.reporting import write_results
from detkd.eval.widerface import (WiderFaceEvaluator, dets_to_xywhs, evaluate_dir, read_pred_dir,
                                  write_txt)

ROOT = Path(__file__).resolve().parents[1]
GT_DIR = ROOT.parent / "shared" / "data" / "widerface_val_gt"
RESULTS = ROOT / "benchmarks" / "results"


def synthetic_predictions(gt, boxes_per_image: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image (xyxy float32 [n, 4], scores float32 [n]): jittered GT (up to half) + random boxes."""
    rng = np.random.default_rng(seed)
    out = []
    for g in gt.boxes:
        g = g.astype(np.float32)
        n_tp = min(len(g), boxes_per_image // 2)
        tp = g[rng.permutation(len(g))[:n_tp]]
        tp = np.c_[tp[:, :2], tp[:, :2] + tp[:, 2:]] + rng.normal(0, 2, (n_tp, 4)).astype(np.float32)
        n_fp = boxes_per_image - n_tp
        xy = rng.uniform(0, 1000, (n_fp, 2)).astype(np.float32)
        fp = np.c_[xy, xy + rng.uniform(4, 200, (n_fp, 2)).astype(np.float32)]
        scores = np.r_[rng.uniform(0.3, 1.0, n_tp), rng.uniform(0.02, 0.8, n_fp)].astype(np.float32)
        out.append((np.r_[tp, fp].astype(np.float32), scores))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boxes", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not (GT_DIR / "wider_face_val.mat").is_file():
        print(f"skipped: real WIDER val GT not found at {GT_DIR}")
        return 0
    t0 = time.perf_counter()
    gt = load_gt(GT_DIR)
    t_load = time.perf_counter() - t0
    preds = synthetic_predictions(gt, args.boxes)
    xywhs = [dets_to_xywhs(b, s) for b, s in preds]
    n_boxes = sum(len(d) for d in xywhs)

    times, aps = [], None
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ev = WiderFaceEvaluator(gt)
        for (event, name), d in zip(gt.images, xywhs):
            ev.add(event, name, d)
        aps = ev.evaluate()
        times.append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        for (event, name), (b, s) in zip(gt.images, preds):
            write_txt(tmp, event, name, b, s)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        read_pred_dir(tmp)
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aps_dir = evaluate_dir(tmp, GT_DIR)
        t_dir = time.perf_counter() - t0

    result = {
        "images": len(gt.images), "boxes": int(n_boxes), "boxes_per_image": args.boxes,
        "load_gt_s": round(t_load, 3),
        "process_evaluate_s": {"min": round(min(times), 3), "all": [round(t, 3) for t in times]},
        "write_txt_all_s": round(t_write, 3), "read_pred_dir_s": round(t_read, 3),
        "evaluate_dir_s": round(t_dir, 3),
        "ap_in_memory": aps, "ap_from_dir": aps_dir, "in_memory_equals_dir": aps == aps_dir,
        "target_s": 3.0, "meets_target": min(times) <= 3.0,
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "cpu_count": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                    "platform": platform.platform()},
        "command": "OMP_NUM_THREADS=1 .venv/bin/python " + " ".join(["benchmarks/eval_widerface_speed.py",
                                                                      *sys.argv[1:]]),
    }
    md = [
        "# WIDER FACE evaluator speed",
        "",
        f"Real val GT ({len(gt.images)} images), synthetic predictions: {n_boxes} boxes "
        f"({args.boxes} per image). Command: `{result['command']}` on {os.cpu_count()} shared CPU cores.",
        "",
        "| step | seconds |",
        "|---|---|",
        f"| load_gt (4 .mat files) | {t_load:.3f} |",
        f"| process() + evaluate(), in memory (min of {args.repeats}) | {min(times):.3f} |",
        f"| write_txt, all {len(gt.images)} files | {t_write:.3f} |",
        f"| read_pred_dir | {t_read:.3f} |",
        f"| evaluate_dir (load_gt + read + evaluate) | {t_dir:.3f} |",
        "",
        f"Target ≤ 3 s for process()+evaluate(): {'met' if result['meets_target'] else 'NOT met'}. "
        f"AP (easy/medium/hard) = " + " / ".join(f"{aps[s]:.4f}" for s in aps)
        + f"; in-memory equals on-disk: {result['in_memory_equals_dir']}.",
        "",
    ]
    write_results(RESULTS, "eval_widerface_speed", result, md)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
