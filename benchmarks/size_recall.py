"""Which faces does each model find? Recall per GT face height on a WIDER-layout val set, and false positives.

    python benchmarks/size_recall.py --data runs/demo/synthfaces --protocol tdkd-640 \
        runs/demo/{teacher,baseline_extra,tdkd}/student.safetensors [--min-score 0.2] [--out table.md]

A diagnostic for "did distillation help, and where": the WIDER AP of the hard subset mixes every face size,
so a model can gain many large faces and still lose AP to tiny ones nobody finds. For every exported model
this prints, over the faces of ``--subset`` (default hard), the fraction matched at IoU >= 0.5 ("+1" IoU, as
the WIDER evaluation) by a detection with score >= ``--min-score``, per height bin in original pixels, plus
the number of such detections that match no GT face at all.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

BINS = (8, 12, 16, 24, 32, 64, 10_000)


def size_recall(weights: Path, val, protocol: str, subset: str, min_score: float) -> dict:
    from detkd.eval.widerface import iou_plus1
    from detkd.infer import detect_image
    from detkd.models.weights import load_model_file

    model, _ = load_model_file(weights)
    model.eval()
    heights, hits, false_pos = [], [], 0
    for i in tqdm(range(len(val)), desc=weights.parent.name, leave=False):
        image, _ = val[i]
        d = detect_image(model, image, protocol)
        boxes = d["boxes"].numpy()[d["scores"].numpy() >= min_score].astype(np.float64)
        g = val.gt.boxes[i].astype(np.float64)
        gt = np.c_[g[:, 0], g[:, 1], g[:, 0] + g[:, 2] - 1, g[:, 1] + g[:, 3] - 1]
        keep = val.gt.keep[subset][i]
        if len(boxes) and len(gt):
            iou = iou_plus1(boxes, gt)
            hit = iou.max(0) >= 0.5
            false_pos += int((iou.max(1) < 0.5).sum())
        else:
            hit = np.zeros(len(gt), bool)
            false_pos += len(boxes)
        heights.append(g[keep, 3])
        hits.append(hit[keep])
    h, hit = np.concatenate(heights), np.concatenate(hits)
    per_bin = [float(hit[(h >= lo) & (h < hi)].mean()) if ((h >= lo) & (h < hi)).any() else float("nan")
               for lo, hi in zip(BINS[:-1], BINS[1:])]
    counts = [int(((h >= lo) & (h < hi)).sum()) for lo, hi in zip(BINS[:-1], BINS[1:])]
    return {"recall_per_bin": per_bin, "faces_per_bin": counts, "recall": float(hit.mean()), "false_pos": false_pos}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", type=Path, nargs="+", help="exported models (.safetensors with a .json card)")
    ap.add_argument("--data", type=Path, required=True, help="WIDER-layout root with val/images and val/gt")
    ap.add_argument("--protocol", default="tdkd-640", help="test protocol (see `detkd list protocols`)")
    ap.add_argument("--subset", default="hard", choices=("easy", "medium", "hard"))
    ap.add_argument("--min-score", type=float, default=0.2)
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    args = ap.parse_args()
    from detkd.data.widerface import WiderFaceVal

    torch.set_num_threads(max(1, torch.get_num_threads()))
    val = WiderFaceVal(args.data / "val" / "images", args.data / "val" / "gt")
    names = [f"{lo}-{hi}" if hi < 10_000 else f"≥{lo}" for lo, hi in zip(BINS[:-1], BINS[1:])]
    rows = {w: size_recall(w, val, args.protocol, args.subset, args.min_score) for w in args.weights}
    counts = next(iter(rows.values()))["faces_per_bin"]
    lines = [f"Recall of {args.subset} faces by height (px), detections with score ≥ {args.min_score}, "
             f"protocol {args.protocol}", "",
             "| model | " + " | ".join(f"{n} ({c})" for n, c in zip(names, counts)) + " | all | unmatched dets |",
             "|---" * (len(names) + 3) + "|"]
    for w, r in rows.items():
        name = w.parent.name if w.stem == "student" else w.stem
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in r["recall_per_bin"])
                     + f" | {r['recall']:.3f} | {r['false_pos']} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
