"""Speed of detkd's VOC and COCO evaluation against the references.

VOC: a generated VOC-layout set (``--images`` images, 20 classes, 0..7 GT per image, 15 % difficult, about
``--dets`` detections per image with distinct scores), scored with VOC07 11-point AP and py-faster-rcnn's
strict IoU comparison by (a) the py-faster-rcnn ``voc_eval.py`` transcription in ``tests/voc_reference.py``
and (b) ``detkd.eval.voc.evaluate_dir``. Both read the same 20 results files; the GT is parsed beforehand
for both (py-faster-rcnn caches it in a pickle), so the timed part is reading detections + matching + AP.
``identical`` means every class AP agrees to 1e-12.

COCO: a generated COCO set of the same size (5 categories with non-contiguous ids, crowd regions, small
objects, images without GT, about ``--dets`` detections per image) scored by pycocotools and by
faster-coco-eval (``COCO`` + ``loadRes`` + ``evaluate`` + ``accumulate`` + ``summarize``).

Writes benchmarks/results/eval_voc_speed.{json,md}.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eval_voc_speed.py [--images 5000] [--dets 100]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "benchmarks" / "results"

from detkd.data.voc import VOC_CLASSES  # noqa: E402
from detkd.eval.voc import VOCGroundTruth, evaluate_dir  # noqa: E402
from synthetic_coco import make_random_coco  # noqa: E402
from synthetic_voc import make_random_voc  # noqa: E402
from voc_reference import parse_rec, voc_eval  # noqa: E402


def bench_voc(n_images: int, dets: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ids = make_random_voc(tmp / "VOC", tmp / "res", n_images, VOC_CLASSES, dets, seed=0)
        n_dets = sum(len(f.read_text().splitlines()) for f in (tmp / "res").glob("*.txt"))
        recs = {i: parse_rec(tmp / "VOC" / "Annotations" / f"{i}.xml") for i in ids}
        gt = VOCGroundTruth.load(tmp / "VOC", "test")
        t0 = time.perf_counter()
        ref = [voc_eval(str(tmp / "res" / "comp4_det_test_{}.txt"), recs, ids, c, 0.5, True)[2] for c in VOC_CLASSES]
        t1 = time.perf_counter()
        ours = evaluate_dir(tmp / "res", gt, split="test", metric="voc07", iou_compare="strict")
        t2 = time.perf_counter()
    diff = max(abs(ours["per_class"][c] - a) for c, a in zip(VOC_CLASSES, ref))
    return {"reference_s": t1 - t0, "detkd_s": t2 - t1, "ratio": (t1 - t0) / (t2 - t1),
            "identical": bool(diff <= 1e-12),
            "_max_abs_diff": float(diff), "_mAP": ours["mAP"], "_detections": n_dets}


def _run_coco(COCO, COCOeval, gt: dict, results: list) -> tuple[float, np.ndarray]:
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        g = COCO()
        g.dataset = gt
        g.createIndex()
        ev = COCOeval(g, g.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        return time.perf_counter() - t0, np.asarray(ev.stats[:12])


def bench_coco(n_images: int, dets: int) -> dict:
    from faster_coco_eval import COCO as FCOCO
    from faster_coco_eval import COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, results = make_random_coco(n_images, dets_per_image=dets, seed=0)
    t_ref, s_ref = _run_coco(COCO, COCOeval, copy.deepcopy(gt), copy.deepcopy(results))
    t_fast, s_fast = _run_coco(FCOCO, COCOeval_faster, copy.deepcopy(gt), copy.deepcopy(results))
    return {"pycocotools_s": t_ref, "faster_coco_eval_s": t_fast, "ratio": t_ref / t_fast,
            "_max_abs_diff": float(np.abs(s_ref - s_fast).max()), "_AP": float(s_fast[0]),
            "_detections": len(results), "_gt": len(gt["annotations"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100, help="detections per image (about)")
    ap.add_argument("--out", type=Path, default=RESULTS / "eval_voc_speed")
    args = ap.parse_args()
    voc = bench_voc(args.images, args.dets)
    print("voc", json.dumps(voc), flush=True)
    coco = bench_coco(args.images, args.dets)
    print("coco", json.dumps(coco), flush=True)
    public = {"voc": {k: v for k, v in voc.items() if not k.startswith("_")},
              "coco": {k: v for k, v in coco.items() if not k.startswith("_")}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(public, indent=1) + "\n")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    md = [
        "# VOC and COCO evaluation speed",
        "",
        f"`python benchmarks/eval_voc_speed.py --images {args.images} --dets {args.dets}` on {platform.machine()}, "
        f"{os.cpu_count()} CPU(s), Python {platform.python_version()}, load average {load:.1f} at the end "
        "(a shared machine: absolute seconds are inflated, ratios less so).",
        "",
        "| evaluator | set | reference (s) | detkd (s) | speed-up | agreement |",
        "|---|---|---:|---:|---:|---|",
        f"| VOC07 11-point, strict IoU | {args.images} images, 20 classes, {voc['_detections']} detections "
        f"| {voc['reference_s']:.2f} (py-faster-rcnn `voc_eval`) | {voc['detkd_s']:.3f} | {voc['ratio']:.1f}x "
        f"| max abs AP diff {voc['_max_abs_diff']:.1e} (mAP {voc['_mAP']:.4f}) |",
        f"| COCO bbox, 12 stats | {args.images} images, 5 classes, {coco['_gt']} GT, {coco['_detections']} "
        f"detections | {coco['pycocotools_s']:.2f} (pycocotools) | {coco['faster_coco_eval_s']:.3f} "
        f"(faster-coco-eval) | {coco['ratio']:.1f}x | max abs stat diff {coco['_max_abs_diff']:.1e} "
        f"(AP {coco['_AP']:.4f}) |",
        "",
        "VOC timings: reading the 20 results files, matching and AP; the GT XML is parsed before the clock starts "
        "for both (py-faster-rcnn caches it). COCO timings: building the GT index, `loadRes`, `evaluate`, "
        "`accumulate`, `summarize`.",
    ]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
