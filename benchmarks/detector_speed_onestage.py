"""One-stage detector speed: detkd RetinaNet vs torchvision's ``retinanet_resnet50_fpn``, and GFL vs RetinaNet.

Interleaved in one process (arm A, arm B, arm A, ... per repeat) on the same input, random weights, eager mode:

* inference: ``model(x, decode=True)`` (detkd, eval mode: backbone, heads, priors, decoding) vs torchvision's
  ``model([img])`` in eval mode (its transform sees an image already at the target size: the resize is a no-op
  interpolate at scale 1, normalisation and padding are the same work as detkd's normalisation);
* training step: forward with one target image, ``backward()``, gradients zeroed (no optimizer step in either arm).

The ratio is ``median(detkd) / median(torchvision)``. GFL (R50, mmdet head with GN) is timed against detkd's
RetinaNet of the same trunk in the same run. Writes the ``"retinanet"`` and ``"gfl_vs_retinanet"`` keys of
``benchmarks/results/detector_speed.json`` (other keys are kept) and ``detector_speed_onestage.md``.

    python benchmarks/detector_speed_onestage.py --height 800 --width 1216 --repeats 5   # the issue's size
    python benchmarks/detector_speed_onestage.py            # CPU default: 512 x 768, 1 thread, 3 repeats

On CPU the clock is the process CPU time with one thread: on a shared machine wall time mostly measures the
neighbours (a first wall-clock run on this 2-core machine under load 10 gave 9.6 s vs 17.2 s for two identical
networks). On CUDA it is synchronised wall time, and peak memory is recorded.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torchvision.models.detection import retinanet_resnet50_fpn

from detkd.models.gfl import gfl
from detkd.models.retinanet import retinanet

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn, cpu: bool) -> float:
    """Seconds of ``fn()``: process CPU time on CPU (a shared machine's neighbours do not count), wall on CUDA."""
    if cpu:
        t0 = time.process_time()
        fn()
        return time.process_time() - t0
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (CPU time is summed over threads)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = args.height, args.width
    img = torch.rand(3, h, w, device=dev)  # torchvision input, 0..1
    x = img[None] * 255  # detkd input, RGB 0..255
    target = {"boxes": torch.tensor([[40.0, 50.0, 200.0, 260.0], [100.0, 30.0, 300.0, 180.0]], device=dev),
              "labels": torch.tensor([3, 17], device=dev)}
    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None).to(dev)
    tv.transform.min_size, tv.transform.max_size = (min(h, w),), max(h, w)  # resize to itself
    ours = retinanet(label_base=0).to(dev)
    ours.load_state_dict(tv.state_dict())
    g = gfl(num_classes=80).to(dev)
    gfl_target = {"boxes": target["boxes"], "labels": target["labels"]}

    def infer(name):
        with torch.no_grad():
            if name == "torchvision":
                tv.eval()
                tv([img])
            elif name == "detkd":
                ours.eval()
                ours(x, decode=True)
            else:
                g.eval()
                g(x, decode=True)

    def train_step(name):
        if name == "torchvision":
            tv.train()
            loss = sum(tv([img], [target]).values())
            model = tv
        elif name == "detkd":
            ours.train()
            loss = sum(ours(x, [target]).losses.values())
            model = ours
        else:
            g.train()
            loss = sum(g(x, [gfl_target]).losses.values())
            model = g
        loss.backward()
        model.zero_grad(set_to_none=True)

    arms = ["torchvision", "detkd", "gfl"]
    times = {(kind, a): [] for kind in ("infer", "train") for a in arms}
    peak_mb = {}
    for r in range(args.warmup + args.repeats):
        for kind, fn in (("infer", infer), ("train", train_step)):
            for a in (arms if r % 2 == 0 else arms[::-1]):  # alternate the order between repeats
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                t = timed(lambda: fn(a), dev.type == "cpu")
                if dev.type == "cuda":
                    peak_mb[f"{kind}/{a}"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                if r >= args.warmup:
                    times[(kind, a)].append(t)
        print(f"repeat {r}: " + ", ".join(f"{k}/{a} {v[-1]:.2f}s" for (k, a), v in times.items() if v), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "retinanet": {
            "infer_ratio": round(med[("infer", "detkd")] / med[("infer", "torchvision")], 4),
            "train_ratio": round(med[("train", "detkd")] / med[("train", "torchvision")], 4),
            "infer_s": {"detkd": round(med[("infer", "detkd")], 4), "torchvision": round(med[("infer", "torchvision")], 4)},
            "train_s": {"detkd": round(med[("train", "detkd")], 4), "torchvision": round(med[("train", "torchvision")], 4)},
            "size": [h, w], "repeats": args.repeats, "device": str(dev),
            "clock": "process CPU time" if dev.type == "cpu" else "wall (CUDA synchronised)",
            "peak_mb": peak_mb or None,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        },
        "gfl_vs_retinanet": {
            "trunk": "ResNet-50 FPN P3-P7, 256 ch",
            "infer_ratio": round(med[("infer", "gfl")] / med[("infer", "detkd")], 4),
            "train_ratio": round(med[("train", "gfl")] / med[("train", "detkd")], 4),
            "infer_s": {"gfl": round(med[("infer", "gfl")], 4), "retinanet": round(med[("infer", "detkd")], 4)},
            "train_s": {"gfl": round(med[("train", "gfl")], 4), "retinanet": round(med[("train", "detkd")], 4)},
        },
    }
    print(json.dumps(result, indent=2))
    if args.no_write:
        return
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "detector_speed.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(result)
    path.write_text(json.dumps(data, indent=2) + "\n")
    r, gv = result["retinanet"], result["gfl_vs_retinanet"]
    md = [
        "# One-stage detector speed (benchmarks/detector_speed_onestage.py)",
        "",
        f"Input {h}x{w}, {dev}, {r['threads']} thread(s), {r['clock']}, median of {args.repeats} interleaved "
        f"repeats after {args.warmup} warm-up, random weights. Peak memory is not measured on CPU.",
        "",
        "| comparison | inference (s) | ratio | train step fwd+bwd (s) | ratio |",
        "|---|---|---|---|---|",
        f"| detkd RetinaNet / torchvision retinanet_resnet50_fpn | {r['infer_s']['detkd']} / "
        f"{r['infer_s']['torchvision']} | {r['infer_ratio']} | {r['train_s']['detkd']} / {r['train_s']['torchvision']}"
        f" | {r['train_ratio']} |",
        f"| detkd GFL R50 / detkd RetinaNet R50 | {gv['infer_s']['gfl']} / {gv['infer_s']['retinanet']} | "
        f"{gv['infer_ratio']} | {gv['train_s']['gfl']} / {gv['train_s']['retinanet']} | {gv['train_ratio']} |",
        "",
    ]
    (RESULTS / "detector_speed_onestage.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
