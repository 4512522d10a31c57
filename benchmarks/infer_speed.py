"""RetinaFace inference speed per pipeline stage (CPU), and the post-processing budget check.

    .venv/bin/python benchmarks/infer_speed.py [--runs 7] [--threads 2]

Stages, each the median of ``--runs`` timed rounds (stages interleaved) after one warm-up:
  preprocess  uint8 RGB -> float32, reference resize (none at origin size), NCHW tensor
  forward     backbone + FPN + SSH + heads (priors cached; the cache lookup is included, ~us)
  priors      building the priors for a new input size (uncached; a WIDER eval meets a new size per image)
  decode      softmax, score filter (> 0.02), optional top-k, box + landmark decoding of the survivors
  nms         greedy "+1" NMS on the survivors
  pipeline    ``detkd.infer.detect_image`` end to end
Budget: decode + NMS + uncached priors must stay <= 15 % of the forward.

Uses the real biubug6 leaky checkpoint and the real WIDER val image when ../shared/data exists (random weights
and a random image otherwise; random weights keep almost every prior above 0.02, a worst case for NMS).
Writes ``benchmarks/results/infer_speed.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from detkd.infer import PROTOCOLS, detect_image, preprocess, read_image
from detkd.models.retinaface import decode_detections, retinaface_mnet
from detkd.ops.nms import nms_plus1
from detkd.ops.priors import make_priors
from detkd.reporting import write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
BUDGET = 0.15


def time_stages(stages: dict, runs: int) -> tuple[dict, dict]:
    """Median and min ms per stage; stages are interleaved round-robin so that load from other processes on a
    shared machine hits every stage alike (the ratio check stays meaningful even when absolute times are noisy)."""
    for fn in stages.values():
        fn()  # warm-up
    times = {k: [] for k in stages}
    for _ in range(runs):
        for k, fn in stages.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return ({k: statistics.median(v) for k, v in times.items()}, {k: min(v) for k, v in times.items()})


def load_model():
    ckpt = DATA / "weights" / "retinaface_mnet025_leaky.pth"
    model = retinaface_mnet(activation="leaky0.1")
    if ckpt.is_file():
        model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
        source = "retinaface_mnet025_leaky.pth (real weights)"
    else:
        source = "random init (../shared/data absent)"
    return model.eval(), source


def load_image():
    path = DATA / "images" / "widerface_val" / "11_Meeting_Meeting_11_Meeting_Meeting_11_176.jpg"
    if path.is_file():
        return read_image(path), path.name
    return np.random.default_rng(0).integers(0, 256, (683, 1024, 3), dtype=np.uint8), "random 1024x683"


@torch.no_grad()
def bench_case(model, image, protocol: str, runs: int) -> dict:
    p = PROTOCOLS[protocol]
    x, r = preprocess(image, p)
    h, w = x.shape[-2:]
    model.prior_cache(h, w)  # warm: forward timing excludes prior building
    out = model(x)
    cls, box, landm = out.cat_head("cls_logits"), out.cat_head("box_reg"), out.cat_head("landmarks")
    priors = model.priors_cxcywh(out)  # the coders' (cx, cy, w, h) form; out.priors are xyxy
    var = model.variance

    def decode_only():  # everything of decode_detections but the NMS
        s = torch.softmax(cls.float(), -1)[0, :, 1]
        idx = (s > p.conf_thresh).nonzero().squeeze(1)
        sc = s[idx]
        if p.top_k is not None and idx.numel() > p.top_k:
            first = torch.argsort(sc, stable=True).flip(0)[: p.top_k]
            idx, sc = idx[first], sc[first]
        from detkd.ops.boxes import decode_boxes, decode_landmarks

        return decode_boxes(box[0, idx], priors[idx], var), sc, decode_landmarks(landm[0, idx], priors[idx], var)

    boxes, scores, _ = decode_only()
    res = {
        "protocol": protocol,
        "input_hw": [int(h), int(w)],
        "priors": int(priors.shape[0]),
        "boxes_before_nms": int(boxes.shape[0]),
        "dets": int(decode_detections(cls, box, landm, priors, var, p.conf_thresh, p.nms_thresh, p.top_k,
                                      p.keep_top_k)[0]["boxes"].shape[0]),
    }
    res["ms"], res["ms_min"] = time_stages({
        "preprocess": lambda: preprocess(image, p),
        "forward": lambda: model(x),
        "priors": lambda: make_priors(h, w, model.config.min_sizes, model.config.steps),
        "priors_cached": lambda: model.prior_cache.xyxy(h, w),
        "decode": decode_only,
        "nms": lambda: nms_plus1(boxes, scores, p.nms_thresh),
        "pipeline": lambda: detect_image(model, image, p),
    }, runs)
    for stat, ms in (("", res["ms"]), ("_min", res["ms_min"])):
        res[f"post_over_forward{stat}"] = (ms["decode"] + ms["nms"] + ms["priors"]) / ms["forward"]
    res["within_budget"] = bool(res["post_over_forward"] <= BUDGET)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    model, source = load_model()
    image, image_name = load_image()
    small = cv2.resize(image, (640, 480), interpolation=cv2.INTER_LINEAR)
    cases = [bench_case(model, image, "biubug6-origin", args.runs), bench_case(model, small, "biubug6-origin", args.runs)]
    report = {
        "model": "retinaface_mnet x0.25 leaky0.1", "weights": source, "image": image_name,
        "torch": torch.__version__, "threads": args.threads, "runs": args.runs,
        "cpu": platform.processor() or platform.machine(), "budget": BUDGET, "cases": cases,
    }
    lines = [
        "# RetinaFace-MobileNet0.25 inference speed (CPU)",
        "",
        f"`{source}`, image `{image_name}`, torch {torch.__version__}, {args.threads} threads, median of {args.runs} runs.",
        "Post = decode + NMS + uncached priors; budget <= 15 % of the forward. Stages are timed round-robin;",
        "the last column also gives the ratio of the per-stage minima (robust to load from other processes).",
        "",
        "| input (HxW) | priors | boxes > 0.02 | dets | preprocess ms | forward ms | priors ms (cached) | decode ms | NMS ms | pipeline ms | post / forward |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        m = c["ms"]
        lines.append(
            f"| {c['input_hw'][0]}x{c['input_hw'][1]} | {c['priors']} | {c['boxes_before_nms']} | {c['dets']} | "
            f"{m['preprocess']:.2f} | {m['forward']:.1f} | {m['priors']:.2f} ({m['priors_cached'] * 1e3:.1f} us) | "
            f"{m['decode']:.2f} | {m['nms']:.2f} | {m['pipeline']:.1f} | "
            f"{100 * c['post_over_forward']:.1f} % {'ok' if c['within_budget'] else 'OVER'} "
            f"(min: {100 * c['post_over_forward_min']:.1f} %) |"
        )
    write_results(RESULTS, "infer_speed", report, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
