"""Generic detectors on CPU: eager (BatchNorm folded) against their one-graph ONNX export in ONNX Runtime.

    .venv/bin/python benchmarks/onnx_detector_speed.py [--repeats 10] [--threads 1] [--height 320] [--width 480]

For RetinaNet and GFL (ResNet-18 FPN, 80 classes) and the CPU-sized Faster R-CNNs (``faster_rcnn_fpn_lite``,
``faster_rcnn_vgg_lite``), random weights with random classifier biases (so that many boxes pass the score
threshold and NMS has work to do; no trained generic checkpoint is shipped): the model is exported with
``--with-nms --dynamic-size`` (protocol ``torchvision``: the model's own thresholds) and both backends run the
same padded image with a smaller valid ``image_size`` (as ``detect`` does), from the input tensor to the final
detections (``model(x)`` + ``postprocess``). Timings interleaved (eager, ORT, eager, ...) after 2 warm-up rounds,
clock = process CPU time (robust to other jobs on a shared machine), medians of ``--repeats``. The detections
must agree: same count, matched one to one among equal labels, boxes within 0.5 px, scores within 1e-4.

Writes ``benchmarks/results/onnx_detector_speed.{json,md}``
(``{"retinanet_r18": {"eager_ms", "ort_ms", "ort_ratio", "detections", "same_detections"}, ..., "machine"}``).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

from detkd import registry
from detkd.export import ExportOptions, export_model
from detkd.models.fuse import fuse_model
from detkd.reporting import write_results
from detkd.runtime import OrtDetector

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
MODELS = {
    "retinanet_r18": ("retinanet", {"depth": 18, "num_classes": 80}),
    "gfl_r18": ("gfl", {"depth": 18, "num_classes": 80}),
    "faster_rcnn_fpn_lite": ("faster_rcnn_fpn_lite", {}),
    "faster_rcnn_vgg_lite": ("faster_rcnn_vgg_lite", {}),
}


def same_detections(ref: dict, got: dict) -> bool:
    n = len(ref["scores"])
    if n != len(got["scores"]):
        return False
    if n == 0:
        return True
    dist = (ref["boxes"][:, None] - got["boxes"][None]).abs().amax(-1)
    dist = dist + 1e6 * (ref["labels"][:, None] != got["labels"][None])
    match = dist.argmin(1)
    return bool(match.unique().numel() == n and dist.gather(1, match[:, None]).max() <= 0.5
                and (ref["scores"] - got["scores"][match]).abs().max() <= 1e-4)


def bench(key: str, tmp: Path, x: torch.Tensor, hw: tuple[int, int], repeats: int, threads: int) -> dict:
    name, kw = MODELS[key]
    torch.manual_seed(0)
    model = registry.lookup("model", name)(**kw).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") and "cls" in n:
                p.normal_(0, 1.0)
    cfg = {"name": name, **kw}
    export_model(model, tmp / f"{key}.onnx", ExportOptions(size=tuple(x.shape[-2:]), dynamic_size=True,
                                                            with_nms=True, check=False), config=cfg)
    fused = fuse_model(model)
    ort = OrtDetector(tmp / f"{key}.onnx", providers=["CPUExecutionProvider"], threads=threads)
    runs = {"eager": lambda: fused.postprocess(fused(x, image_sizes=[hw]))[0],
            "ort": lambda: ort.postprocess(ort(x, image_sizes=[hw]))[0]}
    times: dict[str, list[float]] = {k: [] for k in runs}
    dets = {}
    with torch.no_grad():
        for r in range(repeats + 2):
            for k, fn in runs.items():
                t0 = time.process_time()
                dets[k] = fn()
                if r >= 2:
                    times[k].append((time.process_time() - t0) * 1000)
    eager_ms, ort_ms = statistics.median(times["eager"]), statistics.median(times["ort"])
    return {"eager_ms": round(eager_ms, 1), "ort_ms": round(ort_ms, 1), "ort_ratio": round(ort_ms / eager_ms, 3),
            "detections": len(dets["eager"]["scores"]), "same_detections": same_detections(dets["eager"], dets["ort"])}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--height", type=int, default=320)
    ap.add_argument("--width", type=int, default=480)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    registry.load_all()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (1, 3, args.height, args.width), generator=g).float()
    hw = (args.height - 20, args.width - 30)  # a padded input, as detect feeds it
    x[:, :, hw[0]:], x[:, :, :, hw[1]:] = 0, 0
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="detkd_onnx_speed_") as tmp:
        for key in args.models:
            report[key] = bench(key, Path(tmp), x, hw, args.repeats, args.threads)
            print(key, report[key], flush=True)
    report["machine"] = {"cpu": platform.machine(), "threads": args.threads, "torch": torch.__version__,
                         "onnxruntime": onnxruntime.__version__, "input": [args.height, args.width],
                         "valid": list(hw), "repeats": args.repeats, "clock": "process CPU time"}
    lines = ["# Generic detectors: eager (fused) vs ONNX Runtime (one graph, NMS inside)", "",
             f"{platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, onnxruntime "
             f"{onnxruntime.__version__}; input {args.height}x{args.width} (valid {hw[0]}x{hw[1]}), random weights "
             f"with random classifier biases; medians of {args.repeats} interleaved rounds (process CPU time).", "",
             "| model | detections | eager ms | ORT ms | ORT / eager | same detections |", "|---|---|---|---|---|---|"]
    for key in args.models:
        r = report[key]
        lines.append(f"| {key} | {r['detections']} | {r['eager_ms']} | {r['ort_ms']} | {r['ort_ratio']} | "
                     f"{r['same_detections']} |")
    write_results(RESULTS, "onnx_detector_speed", report, lines)
    return report


if __name__ == "__main__":
    main()
