"""Inference speed on CPU: detkd eager (BatchNorm folded) and ONNX Runtime against the reference pipeline.

    .venv/bin/python benchmarks/infer_speed.py [--repeats 20] [--threads 1] [--stage-runs 7]

1. RetinaFace-MobileNet0.25 (the official leaky biubug6 checkpoint), on the real WIDER val image at its original
   1024x683 and resized to 640x480 (saved as a quality-95 JPEG, read by every pipeline), protocol
   ``biubug6-origin``, from the image file to the final detections:
   * ``reference``: biubug6 ``test_widerface.py`` step by step: ``cv2.imread``, ``np.float32``, BGR mean
     subtraction in numpy, forward of the unfused network (softmax inside, as the reference ``RetinaFace`` in
     test phase), ``PriorBox.forward`` with its Python loops over every location, ``decode`` /
     ``decode_landm`` of every prior and scaling to pixels, score filter, argsort, ``py_cpu_nms`` in numpy;
   * ``eager``: ``read_image`` + ``detkd.infer.detect_image`` with the fused model (``channels_last``);
   * ``ort``: the same with the ONNX graph exported ``--with-nms --dynamic-size`` (decode + NMS in the graph);
     ``ort_raw`` with the raw-head graph and detkd's PyTorch decoding.
   All pipelines run interleaved round-robin (so load from other processes on a shared machine hits them
   alike), ``--repeats`` timed rounds after two warm-up rounds; medians reported. Detections of all three must
   agree: same count, boxes within 1 px, scores within 1e-4 (``same_detections``).
2. MobileFaceNet (512-d, 112x112, random weights) embedding throughput, eager fused vs ONNX Runtime, batch 1
   and 64 (images/s).
3. The per-stage profile of the eager pipeline (read, preprocess, forward, uncached priors, decode, NMS) and
   the post-processing budget: decode + NMS + uncached priors <= 15 % of the forward.

Writes ``benchmarks/results/infer_speed.json`` (top-level keys ``retinaface_1024x683``, ``retinaface_640x480``,
``mobilefacenet``, ``stages``, ``machine``) and ``.md``. Needs ``../shared/data`` (real weights and image);
without it the detector falls back to random weights and a random image (ratios only, detections meaningless).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from itertools import product
from math import ceil
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from detkd.export import ExportOptions, export_model
from detkd.infer import PROTOCOLS, detect_image, preprocess, read_image
from detkd.models.fuse import fuse_model
from detkd.models.retinaface import decode_detections, retinaface_mnet
from detkd.ops.nms import nms_plus1
from detkd.ops.priors import make_priors
from detkd.reporting import write_results
from detkd.runtime import OrtDetector, OrtFaceRecognizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
IMAGE = DATA / "images" / "widerface_val" / "11_Meeting_Meeting_11_Meeting_Meeting_11_176.jpg"
CKPT = DATA / "weights" / "retinaface_mnet025_leaky.pth"
BUDGET = 0.15
TARGETS = {"eager_ratio": 0.6, "ort_ratio": 0.4}


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """ms per call of each function, timed round-robin (one call of each per round)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


# ------------------------------------------------------------------------------------ the reference pipeline


class ReferenceNet(torch.nn.Module):
    """biubug6 ``RetinaFace.forward`` in test phase on a BGR mean-subtracted input: (loc, softmax(conf), landms)."""

    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x):
        m = self.m
        fpn = m.fpn(list(m.body(x).values()))
        feats = [m.ssh1(fpn[0]), m.ssh2(fpn[1]), m.ssh3(fpn[2])]
        loc = torch.cat([m.BboxHead[i](f)[0] for i, f in enumerate(feats)], dim=1)
        conf = torch.cat([m.ClassHead[i](f)[0] for i, f in enumerate(feats)], dim=1)
        landms = torch.cat([m.LandmarkHead[i](f)[0] for i, f in enumerate(feats)], dim=1)
        return loc, F.softmax(conf, dim=-1), landms


def prior_box(min_sizes, steps, image_size) -> torch.Tensor:
    """biubug6 ``PriorBox.forward`` (Python loops; normalised cx, cy, w, h; clip=False)."""
    feature_maps = [[ceil(image_size[0] / s), ceil(image_size[1] / s)] for s in steps]
    anchors = []
    for k, f in enumerate(feature_maps):
        for i, j in product(range(f[0]), range(f[1])):
            for min_size in min_sizes[k]:
                s_kx = min_size / image_size[1]
                s_ky = min_size / image_size[0]
                dense_cx = [x * steps[k] / image_size[1] for x in [j + 0.5]]
                dense_cy = [y * steps[k] / image_size[0] for y in [i + 0.5]]
                for cy, cx in product(dense_cy, dense_cx):
                    anchors += [cx, cy, s_kx, s_ky]
    return torch.Tensor(anchors).view(-1, 4)


def ref_decode(loc, priors, variances):
    boxes = torch.cat((priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:],
                       priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])), 1)
    boxes[:, :2] -= boxes[:, 2:] / 2
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def ref_decode_landm(pre, priors, variances):
    return torch.cat([priors[:, :2] + pre[:, 2 * k:2 * k + 2] * variances[0] * priors[:, 2:] for k in range(5)], 1)


def py_cpu_nms(dets, thresh):
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


@torch.no_grad()
def reference_pipeline(net, path, cfg, conf_thresh=0.02, nms_thresh=0.4) -> dict:
    img_raw = cv2.imread(str(path), cv2.IMREAD_COLOR)
    img = np.float32(img_raw)
    im_height, im_width, _ = img.shape
    scale = torch.Tensor([img.shape[1], img.shape[0], img.shape[1], img.shape[0]])
    img -= (104, 117, 123)
    img = torch.from_numpy(img.transpose(2, 0, 1)).unsqueeze(0)
    loc, conf, landms = net(img)
    priors = prior_box(cfg.min_sizes, cfg.steps, (im_height, im_width))
    boxes = ref_decode(loc.data.squeeze(0), priors, cfg.variance) * scale
    boxes = boxes.cpu().numpy()
    scores = conf.squeeze(0).data.cpu().numpy()[:, 1]
    landms = ref_decode_landm(landms.data.squeeze(0), priors, cfg.variance)
    landms = (landms * torch.Tensor([img.shape[3], img.shape[2]] * 5)).cpu().numpy()
    inds = np.where(scores > conf_thresh)[0]
    boxes, landms, scores = boxes[inds], landms[inds], scores[inds]
    order = scores.argsort()[::-1]
    boxes, landms, scores = boxes[order], landms[order], scores[order]
    dets = np.hstack((boxes, scores[:, np.newaxis])).astype(np.float32, copy=False)
    keep = py_cpu_nms(dets, nms_thresh)
    dets, landms = dets[keep, :], landms[keep]
    return {"boxes": torch.from_numpy(dets[:, :4]), "scores": torch.from_numpy(dets[:, 4]),
            "landmarks": torch.from_numpy(landms).reshape(-1, 5, 2)}


# ------------------------------------------------------------------------------------------------- helpers


def compare(a: dict, b: dict) -> dict:
    """Detections equal up to order: one-to-one box match within 1 px, scores within 1e-4."""
    na, nb = len(a["scores"]), len(b["scores"])
    res = {"n": [na, nb]}
    if na != nb:
        return res | {"same": False}
    if na == 0:
        return res | {"same": True}
    dist = (a["boxes"][:, None, :].double() - b["boxes"][None, :, :].double()).abs().amax(-1)
    match = dist.argmin(1)
    box_err = float(dist.gather(1, match[:, None]).max())
    score_err = float((a["scores"].double() - b["scores"][match].double()).abs().max())
    one_to_one = match.unique().numel() == na
    return res | {"max_box_px": box_err, "max_score": score_err,
                  "same": bool(one_to_one and box_err <= 1.0 and score_err <= 1e-4)}


def load_detector():
    model = retinaface_mnet(activation="leaky0.1")
    if CKPT.is_file():
        model.load_state_dict(torch.load(CKPT, map_location="cpu", weights_only=True))
        return model.eval(), "retinaface_mnet025_leaky.pth (real weights)"
    return model.eval(), "random init (../shared/data absent: detections meaningless)"


def image_files(tmp: Path) -> dict[str, Path]:
    if IMAGE.is_file():
        full = read_image(IMAGE)
        orig = IMAGE
    else:
        full = np.random.default_rng(0).integers(0, 256, (683, 1024, 3), dtype=np.uint8)
        orig = tmp / "random_1024x683.png"
        cv2.imwrite(str(orig), full[..., ::-1])
    small = tmp / "wider_640x480.jpg"
    cv2.imwrite(str(small), cv2.resize(full, (640, 480), interpolation=cv2.INTER_LINEAR)[..., ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, 95])
    h, w = full.shape[:2]
    return {f"retinaface_{w}x{h}": orig, "retinaface_640x480": small}


def bench_retinaface(model, files: dict, tmp: Path, repeats: int, threads: int) -> dict:
    fused = fuse_model(model, channels_last=True)
    ref_net = ReferenceNet(model).eval()
    cfg = model.config
    graphs = {}
    for name, with_nms in (("ort", True), ("ort_raw", False)):
        export_model(model, tmp / f"{name}.onnx", ExportOptions(dynamic_size=True, with_nms=with_nms, check=False))
        graphs[name] = OrtDetector(tmp / f"{name}.onnx", providers=["CPUExecutionProvider"], threads=threads)
    out = {}
    for case, path in files.items():
        pipes = {
            "reference": lambda: reference_pipeline(ref_net, path, cfg),
            "eager": lambda: detect_image(fused, read_image(path)),
            "ort": lambda: detect_image(graphs["ort"], read_image(path)),
            "ort_raw": lambda: detect_image(graphs["ort_raw"], read_image(path)),
        }
        dets = {k: fn() for k, fn in pipes.items()}
        checks = {k: compare(dets["reference"], dets[k]) for k in ("eager", "ort", "ort_raw")}
        times = interleaved(pipes, repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        h, w = read_image(path).shape[:2]
        out[case] = {
            "reference_ms": med["reference"], "eager_ms": med["eager"], "ort_ms": med["ort"],
            "eager_ratio": med["eager"] / med["reference"], "ort_ratio": med["ort"] / med["reference"],
            "same_detections": all(c["same"] for c in checks.values()),
            "ort_raw_ms": med["ort_raw"], "ort_raw_ratio": med["ort_raw"] / med["reference"],
            "image": path.name, "input_hw": [h, w], "detections": len(dets["reference"]["scores"]),
            "checks": checks, "min_ms": {k: min(v) for k, v in times.items()},
            "iqr_ms": {k: [float(np.percentile(v, 25)), float(np.percentile(v, 75))] for k, v in times.items()},
        }
    return out


def bench_mobilefacenet(tmp: Path, repeats: int, threads: int) -> dict:
    from detkd.models.facerec import mobilefacenet

    torch.manual_seed(0)
    model = mobilefacenet().eval()
    fused = fuse_model(model, channels_last=True)
    export_model(model, tmp / "mfn.onnx", ExportOptions(check=False),
                 config={"name": "mobilefacenet", "embedding_dim": 512, "input_size": 112})
    ort_model = OrtFaceRecognizer(tmp / "mfn.onnx", providers=["CPUExecutionProvider"], threads=threads)
    out = {}
    for batch, reps in ((1, repeats), (64, max(5, repeats // 4))):
        x = torch.randint(0, 256, (batch, 3, 112, 112)).float()
        with torch.no_grad():
            e, o = fused(x).embedding, ort_model(x).embedding
            u = model(x).embedding
        cos = float(torch.nn.functional.cosine_similarity(e, o, dim=1).min())
        cos_unfused = float(torch.nn.functional.cosine_similarity(u, o, dim=1).min())
        with torch.no_grad():
            times = interleaved({"eager": lambda: fused(x), "ort": lambda: ort_model(x)}, reps, warmup=1)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[f"batch{batch}"] = {"eager_img_s": batch / med["eager"] * 1e3, "ort_img_s": batch / med["ort"] * 1e3,
                                "eager_ms": med["eager"], "ort_ms": med["ort"], "repeats": reps,
                                "min_cosine_ort_vs_eager": min(cos, cos_unfused)}
    return out


@torch.no_grad()
def bench_stages(model, path, runs: int) -> dict:
    """Where the eager pipeline's time goes (fused model, biubug6-origin)."""
    fused = fuse_model(model, channels_last=True)
    p = PROTOCOLS["biubug6-origin"]
    image = read_image(path)
    x, _ = preprocess(image, p)
    h, w = x.shape[-2:]
    out = fused(x)
    cls, box, landm = out.cat_head("cls_logits"), out.cat_head("box_reg"), out.cat_head("landmarks")
    priors = fused.priors_cxcywh(out)  # the coders' (cx, cy, w, h) form; out.priors are xyxy
    d = decode_detections(cls, box, landm, priors, fused.variance, p.conf_thresh, p.nms_thresh)
    s = torch.softmax(cls, -1)[0, :, 1]
    idx = (s > p.conf_thresh).nonzero().squeeze(1)
    from detkd.ops.boxes import decode_boxes

    boxes = decode_boxes(box[0, idx], priors[idx], fused.variance)
    times = interleaved({
        "read": lambda: read_image(path),
        "preprocess": lambda: preprocess(image, p),
        "forward": lambda: fused(x),
        "priors": lambda: make_priors(h, w, model.config.min_sizes, model.config.steps),
        "decode": lambda: decode_detections(cls, box, landm, priors, fused.variance, 1.1, p.nms_thresh),
        "decode_nms": lambda: decode_detections(cls, box, landm, priors, fused.variance, p.conf_thresh, p.nms_thresh),
        "nms": lambda: nms_plus1(boxes, s[idx], p.nms_thresh),
        "pipeline": lambda: detect_image(fused, read_image(path)),
    }, runs, warmup=1)
    ms = {k: statistics.median(v) for k, v in times.items()}
    post = ms["decode_nms"] + ms["priors"]
    return {"image": path.name, "input_hw": [int(h), int(w)], "priors": int(priors.shape[0]),
            "boxes_before_nms": int(idx.numel()), "dets": int(d[0]["scores"].numel()), "ms": ms,
            "post_over_forward": post / ms["forward"], "within_budget": bool(post / ms["forward"] <= BUDGET)}


def write_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Inference speed (CPU): detkd eager and ONNX Runtime vs the reference pipeline",
        "",
        f"{m['cpu']}, {m['cores']} cores shared with other jobs (load average {m['load_avg']} at start), "
        f"{m['threads']} thread(s) for torch and ONNX Runtime, torch {m['torch']}, onnxruntime {m['onnxruntime']}.",
        f"`{report['weights']}`; protocol biubug6-origin; medians of {report['repeats']} interleaved rounds after",
        "2 warm-up rounds, from the image file to the final detections. The machine is shared and noisy: absolute",
        "times move with the load, the interleaved ratios much less (25-75 % ranges in the JSON).",
        "",
        "| case | detections | reference ms | eager ms | ORT ms (NMS in graph) | ORT raw ms "
        "| eager ratio (target <= 0.6) | ORT ratio (target <= 0.4) | same detections |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in (k for k in report if k.startswith("retinaface_")):
        c = report[case]
        lines.append(
            f"| {case} | {c['detections']} | {c['reference_ms']:.1f} | {c['eager_ms']:.1f} | {c['ort_ms']:.1f} | "
            f"{c['ort_raw_ms']:.1f} | {c['eager_ratio']:.2f} {'ok' if c['eager_ratio'] <= 0.6 else 'MISSED'} | "
            f"{c['ort_ratio']:.2f} {'ok' if c['ort_ratio'] <= 0.4 else 'MISSED'} | {c['same_detections']} |")
    mf = report["mobilefacenet"]
    lines += ["", "MobileFaceNet (512-d, 112x112) embeddings, images/s:", "",
              "| batch | eager (fused) | ONNX Runtime | min cosine ORT vs eager |", "|---|---|---|---|"]
    for b, r in mf.items():
        lines.append(f"| {b[5:]} | {r['eager_img_s']:.0f} | {r['ort_img_s']:.0f} | "
                     f"{r['min_cosine_ort_vs_eager']:.6f} |")
    st = report["stages"]
    ms = st["ms"]
    lines += ["", f"Eager pipeline stages at {st['input_hw'][0]}x{st['input_hw'][1]} ({st['priors']} priors, "
              f"{st['boxes_before_nms']} > 0.02, {st['dets']} kept), median ms:", "",
              "| read | preprocess | forward | priors (uncached) | decode | decode + NMS | NMS alone | pipeline "
              "| post / forward (budget 15 %) |",
              "|---|---|---|---|---|---|---|---|---|",
              f"| {ms['read']:.2f} | {ms['preprocess']:.2f} | {ms['forward']:.1f} | {ms['priors']:.2f} | "
              f"{ms['decode']:.2f} | {ms['decode_nms']:.2f} | {ms['nms']:.2f} | {ms['pipeline']:.1f} | "
              f"{100 * st['post_over_forward']:.1f} % {'ok' if st['within_budget'] else 'OVER'} |"]
    lines += ["", "Generic detectors vs torchvision's own models: `benchmarks/detector_speed.py` "
              "(`detector_speed.md`); their ONNX Runtime speed: `onnx_detector_speed.py` (`onnx_detector_speed.md`)."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stage-runs", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)
    import onnxruntime

    load = os.getloadavg()
    model, source = load_detector()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        files = image_files(tmp)
        report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                              "threads": args.threads, "torch": torch.__version__,
                              "onnxruntime": onnxruntime.__version__, "load_avg": [round(v, 1) for v in load]},
                  "weights": source, "repeats": args.repeats, "targets": TARGETS}
        report |= bench_retinaface(model, files, tmp, args.repeats, args.threads)
        report["mobilefacenet"] = bench_mobilefacenet(tmp, args.repeats, args.threads)
        report["stages"] = bench_stages(model, next(iter(files.values())), args.stage_runs)
    md = write_markdown(report)
    write_results(RESULTS, "infer_speed", report, md.splitlines())
    print(md)


if __name__ == "__main__":
    main()
