"""detkd's Faster R-CNN ResNet50-FPN against torchvision's own ``fasterrcnn_resnet50_fpn``: time and memory.

    .venv/bin/python benchmarks/detector_speed.py [--infer-runs 3] [--train-runs 2] [--height 800] [--width 1333]

Both models have the SAME random weights (torchvision's ``fasterrcnn_resnet50_fpn(weights=None)`` state dict
loaded into detkd's ``faster_rcnn_fpn(num_classes=90, norm="bn", trainable_layers=5)``: identical keys), 91
classes, trainable BatchNorm (torchvision's choice for ``weights=None``) and the same input: one 800 x 1333 image
(detkd gets it padded to a multiple of 32 with ``image_sizes``, which torchvision's transform produces itself).
Same weights matter: with different random weights the RPN's NMS keeps a different number of proposals and the
second stage does different work (333 vs 934 RoIs in one trial). Timings are interleaved (detkd, torchvision,
detkd, ...) after one warm-up each; the clock is the process CPU time on CPU (1 thread by default: robust to
other processes on a shared machine) and wall time on CUDA; the ratios are medians.

* inference: eval mode, no targets, ``decode=True`` (detkd returns the full ``DetOutput``) vs torchvision's
  eval forward (detections only), under ``torch.no_grad``;
* training step: train mode, 3 GT boxes, forward + backward of the summed task losses (no optimizer step).

Peak memory: CUDA ``max_memory_allocated`` per run where a GPU is used; on CPU the peak resident-set growth
above the level before each run, sampled every 2 ms from ``/proc/self/statm`` (approximate: the allocator
may keep freed memory). Few repeats by default because a 2-core CPU takes seconds per R50 step at this size.
Writes ``benchmarks/results/detector_speed.json`` (``{"faster_rcnn_fpn": {"infer_ratio", "train_ratio", ...}}``;
other families add their own key) and ``detector_speed.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from detkd.models.faster_rcnn import faster_rcnn_fpn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or sampled RSS growth on CPU (MiB)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base, self.top, self.stop = self._rss(), 0, False

            def sample():
                while not self.stop:
                    self.top = max(self.top, self._rss())
                    time.sleep(0.002)

            self.thread = threading.Thread(target=sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2 ** 20
        else:
            self.stop = True
            self.thread.join()
            self.peak_mb = max(self.top - self.base, 0) / 2 ** 20


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--infer-runs", type=int, default=3)
    ap.add_argument("--train-runs", type=int, default=2)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--width", type=int, default=1333)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=RESULTS / "detector_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).to(dev)
    ours = faster_rcnn_fpn(num_classes=90, norm="bn", trainable_layers=5).to(dev)
    ours.load_state_dict(tv.state_dict())  # same layout: same weights, same proposals, same work
    h, w = args.height, args.width
    img = torch.rand(3, h, w, device=dev)
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    padded = torch.zeros(1, 3, ph, pw, device=dev)
    padded[0, :, :h, :w] = img * 255
    boxes = torch.tensor([[100.0, 120, 400, 500], [600, 200, 900, 700], [50, 50, 250, 200]], device=dev)
    labels = torch.tensor([1, 18, 62], device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    clock = time.perf_counter if dev.type == "cuda" else time.process_time

    def infer_tv():
        tv.eval()
        with torch.no_grad():
            tv([img])

    def infer_ours():
        ours.eval()
        with torch.no_grad():
            ours(padded, decode=True, image_sizes=[(h, w)])

    def train_tv():
        tv.train()
        loss = sum(tv([img], [{"boxes": boxes, "labels": labels}]).values())
        loss.backward()
        tv.zero_grad(set_to_none=True)

    def train_ours():
        ours.train()
        loss = sum(ours(padded, [{"boxes": boxes, "labels": labels}], image_sizes=[(h, w)]).losses.values())
        loss.backward()
        ours.zero_grad(set_to_none=True)

    cases = {"infer": (infer_ours, infer_tv, args.infer_runs), "train": (train_ours, train_tv, args.train_runs)}
    times = {f"{k}_{who}": [] for k in cases for who in ("detkd", "torchvision")}
    peaks = {f"{k}_{who}": 0.0 for k in cases for who in ("detkd", "torchvision")}
    for kind, (mine, theirs, runs) in cases.items():
        mine(), theirs()  # warm-up
        for _ in range(runs):
            for who, fn in (("detkd", mine), ("torchvision", theirs)):
                sync()
                with PeakMemory(dev) as mem:
                    t0 = clock()
                    fn()
                    sync()
                    times[f"{kind}_{who}"].append(clock() - t0)
                peaks[f"{kind}_{who}"] = max(peaks[f"{kind}_{who}"], mem.peak_mb)
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "infer_ratio": med["infer_detkd"] / med["infer_torchvision"],
        "train_ratio": med["train_detkd"] / med["train_torchvision"],
        "seconds_median": med,
        "seconds_all": times,
        "peak_memory_mb": peaks,
        "peak_memory_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "cpu rss growth (sampled)",
        "clock": "wall" if dev.type == "cuda" else "process CPU time",
        "input": [h, w],
        "runs": {"infer": args.infer_runs, "train": args.train_runs},
        "device": str(dev), "threads": args.threads, "torch": torch.__version__, "machine": platform.processor(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(args.out.read_text()) if args.out.is_file() else {}
    data["faster_rcnn_fpn"] = row
    args.out.write_text(json.dumps(data, indent=2))
    lines = ["| model | infer detkd s | infer tv s | infer ratio | train detkd s | train tv s | train ratio | "
             "peak MiB detkd / tv (infer; train) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in [("faster_rcnn_fpn", row)]:
        m, p = r["seconds_median"], r["peak_memory_mb"]
        lines.append(f"| {name} | {m['infer_detkd']:.2f} | {m['infer_torchvision']:.2f} | {r['infer_ratio']:.3f} | "
                     f"{m['train_detkd']:.2f} | {m['train_torchvision']:.2f} | {r['train_ratio']:.3f} | "
                     f"{p['infer_detkd']:.0f} / {p['infer_torchvision']:.0f}; {p['train_detkd']:.0f} / "
                     f"{p['train_torchvision']:.0f} |")
    note = (f"\n{h}x{w}, random weights, {args.infer_runs} inference and {args.train_runs} training repeats "
            f"(interleaved, medians, clock: {row['clock']}) on {dev} with {args.threads} thread(s); memory: "
            f"{row['peak_memory_kind']}. Other families: detector_speed_onestage.md.\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n" + note)
    print("\n".join(lines) + note)
    return row


if __name__ == "__main__":
    main()
