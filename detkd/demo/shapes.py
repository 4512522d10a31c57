"""``detkd demo shapes``: generic detection on SynthShapes, one (method, detector) pair per detector family.

For each pair (FGFI on the FPN Faster R-CNN, DeFeat on RetinaNet, LD on GFL) the shipped teacher and the
shipped baseline student (``detkd/assets/synthshapes_{teacher,baseline}_<family>.safetensors`` with their cards)
are taken as they are; the baseline is then fine-tuned twice with an identical short schedule: without
distillation (``control``) and with the method. The four models are scored on the first val scenes with VOC07
mAP@0.5 (11-point) and COCO AP from one inference pass. The model configs come from the cards (turned into
``model.*`` / ``distill.teacher.*`` overrides of the ``*_lite_synthshapes`` configs), so a re-trained asset of
another size needs no code change. A pair whose two assets are not both shipped is skipped, and said so.

The fine-tunes are short (a demo budget, see ``ShapesSchedule``): one seed of them shows the pipeline and the
size of the effects, not a verdict; ``benchmarks/kd_gain_generic.py`` / ``kd_gain_ld.py`` pair seeds for that.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detkd.config import DetEvalConfig, load_config
from detkd.demo.common import (ASSETS, Model, PartResult, card_overrides, draw_gallery, loss_figure, shipped,
                               train_export)

FAMILIES = ("faster_rcnn_fpn", "retinanet", "gfl")


@dataclass(frozen=True)
class Pair:
    method: str
    family: str
    student: str  # the baseline's config (the control fine-tune runs it)
    distill: str  # the method's SynthShapes config
    method_overrides: tuple[str, ...] = ()


PAIRS = (
    # FGFI's 400-iteration zero warm-up would leave a short fine-tune without imitation: it starts at once here.
    # FGFI runs on the FPN Faster R-CNN (per-level masks): the C4 VGG student of FGFI's paper pair gave no detection
    # above score 0.05 after a CPU-sized run (benchmarks/results/synthshapes_capacity.md), so it is not shipped.
    Pair("fgfi", "faster_rcnn_fpn", "faster_rcnn/fpn_lite_synthshapes", "fgfi/faster_rcnn_fpn_lite_synthshapes",
         ("distill.fgfi.warmup_iters=0",)),
    Pair("defeat", "retinanet", "retinanet/r18_lite_synthshapes", "defeat/retinanet_lite_synthshapes"),
    Pair("ld", "gfl", "gfl/r18_lite_synthshapes", "ld/ld_lite_synthshapes"),
)


def asset(role: str, family: str, assets: Path = ASSETS) -> Path:
    return Path(assets) / f"synthshapes_{role}_{family}.safetensors"


@dataclass
class ShapesSchedule:
    """Sizes of the part. Sized from steps timed at OMP_NUM_THREADS=1 on the 2-core machine while other jobs ran
    (batch 8, 256 px, width-0.25 trunks): a training step of the VGG C4 student 2.8 s (FGFI 5.0 s), RetinaNet 1.8 s
    (DeFeat 2.9 s), GFL about the same; 0.15-0.18 s per val image. The FPN Faster R-CNN student took 1.4-1.7 s
    per step in its capacity run (2026-12-07, 1 thread, 2-3 jobs on the 2 cores). Idle and with 2 threads that is
    roughly halved: 16 iterations per fine-tune and 48 val images come to ~25-40 s of training and ~12 s of
    evaluation per pair, ~3 min for the three pairs with data and start-up: the part's share (5 min) of the
    20-minute `make demo`."""

    finetune_images: int = 128  # training scenes (the first ones of SynthShapes seed 0): 16 iterations of 8
    epochs: int = 1
    val_images: int = 48  # the first val scenes
    gallery_images: int = 2
    max_iters: int = 0  # >0: stop every run after this many iterations (smoke test)
    overrides: list[str] = field(default_factory=list)  # extra overrides of every run (tests: tiny sizes)

    @classmethod
    def quick(cls):
        return cls(finetune_images=8, val_images=4, gallery_images=1, max_iters=2)


def pooled_pr(voc) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision over every class pooled (IoU 0.5, VOC matching, difficult objects ignored) of what
    the ``VOCEvaluator`` ``voc`` processed: one curve per model for the page."""
    from detkd.eval.voc import ClassDetections, match_class

    records = voc.gathered() or []
    if not records:
        return np.zeros(0), np.zeros(0)
    image = np.concatenate([np.full(len(r[3]), r[0], np.int64) for r in records])
    boxes = np.concatenate([r[1] for r in records]).reshape(-1, 4)
    scores = np.concatenate([r[2] for r in records])
    labels = np.concatenate([r[3] for r in records])
    npos, ranked, tps, fps = 0, [], [], []
    for c in range(len(voc.gt.class_names)):
        m = labels == c + 1
        n, [(tp, fp)] = match_class(voc.gt, c, ClassDetections(image[m], scores[m], boxes[m]), [0.5])
        npos += n
        ranked.append(-np.sort(-scores[m], kind="stable"))  # match_class's descending-score order
        tps.append(tp)
        fps.append(fp)
    order = np.argsort(-np.concatenate(ranked), kind="stable")
    tp, fp = np.cumsum(np.concatenate(tps)[order]), np.cumsum(np.concatenate(fps)[order])
    return tp / max(npos, 1), tp / np.maximum(tp + fp, np.finfo(np.float64).eps)


def evaluate(weights: Path, cfg) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """VOC07 mAP@0.5 and COCO AP on ``cfg``'s val split (one inference pass, the config's test protocol), and
    the pooled precision-recall curve."""
    from detkd.experiment import build_evaluators, build_val_set, evaluate_detector
    from detkd.models.weights import load_model_file

    model, _ = load_model_file(weights)
    val = build_val_set(cfg)
    group = build_evaluators(DetEvalConfig(evaluator="voc", also=["coco"]), val)
    res = evaluate_detector(model, val, group, cfg.eval.protocol, progress=False)
    scores = {"voc07_map": float(res["mAP"]), "coco_ap": float(res["coco/AP"]), "coco_ap50": float(res["coco/AP50"])}
    return scores, pooled_pr(group.members[""])


def run_pair(pair: Pair, out_dir: Path, data: list[str], seed: int, sched: ShapesSchedule,
             assets: Path) -> tuple[list[Model], dict, dict, object]:
    """Teacher and baseline (shipped), control and method fine-tunes; returns the models, their scores, their
    precision-recall curves and the student config (for the val set)."""
    from detkd.models.weights import read_card

    t_asset, b_asset = asset("teacher", pair.family, assets), asset("baseline", pair.family, assets)
    student = load_config(pair.student)
    model_ovr = card_overrides(read_card(b_asset)["model"], student.model, "model")
    teacher_ovr = card_overrides(read_card(t_asset)["model"], load_config(pair.distill).distill.teacher,
                                 "distill.teacher")
    teacher = shipped(t_asset, out_dir / "teacher" / "student.safetensors", "teacher")
    baseline = shipped(b_asset, out_dir / "baseline" / "student.safetensors", "baseline")
    ft = [*data, *model_ovr, f"train.seed={seed}", f"train.epochs={sched.epochs}", f"train.max_iters={sched.max_iters}",
          f"train.init_weights={baseline.weights}", "sched.warmup_iters=0", *sched.overrides]
    control, _ = train_export(pair.student, "control", out_dir, ft)
    method, _ = train_export(pair.distill, pair.method, out_dir,
                             [*ft, *teacher_ovr, f"distill.teacher_weights={teacher.weights}", *pair.method_overrides],
                             distils=True)
    cfg = load_config(pair.student, [*data, *model_ovr, *sched.overrides])
    models = [teacher, baseline, control, method]
    evals = {m.name: evaluate(m.weights, cfg) for m in models}
    return models, {k: v[0] for k, v in evals.items()}, {k: v[1] for k, v in evals.items()}, cfg


def gallery(models: list[Model], cfg, out_dir: Path, n_images: int) -> dict[str, list[Path]]:
    from detkd.data.synthshapes import SYNTHSHAPES_CLASSES
    from detkd.experiment import build_val_set
    from detkd.infer_detector import detect_image

    val = build_val_set(cfg)
    images = []
    for i in range(min(n_images, len(val))):
        image, meta = val[i]
        images.append((str(meta["image_id"]), image, np.asarray(val.records[i].boxes, np.float64)))
    return draw_gallery(models, images, lambda m, im: detect_image(m, im, cfg.eval.protocol), out_dir,
                        names=["__background__", *SYNTHSHAPES_CLASSES], top_gt=True)


def run_shapes(out_dir: Path, quick: bool = False, seed: int = 0, schedule: ShapesSchedule | None = None,
               assets: Path = ASSETS) -> dict:
    """Run every pair whose two assets exist under ``out_dir`` (one directory per pair); returns
    ``{"<method>/<family>": {model: scores}}`` and writes ``results.json`` and ``part.json``."""
    from detkd.data.synthshapes import ensure_synthshapes, preset_config
    from detkd.eval.plots import plot_pr_curves

    t_start = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sched = schedule or (ShapesSchedule.quick() if quick else ShapesSchedule())
    results, rows, commands, figures, pics, notes = {}, [], [], [], {}, []
    runnable = []
    for pair in PAIRS:
        missing = [p.name for p in (asset("teacher", pair.family, assets), asset("baseline", pair.family, assets))
                   if not p.is_file() or not p.with_suffix(".json").is_file()]
        if missing:
            notes.append(f"{pair.method}/{pair.family}: skipped, asset(s) not shipped: {', '.join(missing)} "
                         "(with their .json cards)")
            print(f"[demo] {notes[-1]}", flush=True)
        else:
            runnable.append(pair)
    for pair in runnable:
        key = f"{pair.method}/{pair.family}"
        pair_dir = out_dir / f"{pair.method}_{pair.family}"
        # one data root per generator preset: each student config names the preset it was sized for
        preset = getattr(load_config(pair.student).data, "preset", "full")
        data_root = out_dir / f"synthshapes_{preset}"
        ensure_synthshapes(data_root, n_train=sched.finetune_images, n_val=sched.val_images,
                           cfg=preset_config(preset))
        data = [f"data.root={data_root}", f"data.n_train={sched.finetune_images}", f"data.n_val={sched.val_images}",
                f"data.preset={preset}"]
        models, scores, curves, cfg = run_pair(pair, pair_dir, data, seed, sched, assets)
        results[key] = scores
        pr = plot_pr_curves(curves, pair_dir / "pr_curves.png", f"SynthShapes {key}: all classes pooled, IoU 0.5")
        figures.append(str(pr.relative_to(out_dir)))
        for m in models:
            s = scores[m.name]
            rows.append([key, m.name, f"{100 * s['voc07_map']:.1f}", f"{100 * s['coco_ap']:.1f}",
                         f"{100 * s['coco_ap50']:.1f}"])
            commands.append(m.command)
        loss = loss_figure(models[2:], pair_dir / "loss_curves.png")
        figures += [str(loss.relative_to(out_dir))] if loss is not None else []
        shown = [models[0], models[1], models[3]]
        for image_id, paths in gallery(shown, cfg, pair_dir / "gallery", sched.gallery_images).items():
            pics[f"{key} {image_id}"] = [str(p.relative_to(out_dir)) for p in paths]
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    PartResult(
        key="shapes", title="Generic detection on SynthShapes (FGFI, DeFeat, LD)",
        intro=(f"Per pair: shipped teacher and baseline, then the baseline fine-tuned {sched.finetune_images // 8} "
               "iterations (batch 8) without distillation (control) and with the method, same seed and schedule. "
               f"VOC07 mAP@0.5 and COCO AP (in %) on the first {sched.val_images} val scenes; one seed of a short "
               "schedule: it shows the pipeline, the paired multi-seed benchmarks give the verdict. Gallery: each "
               "model's N best detections (N = the scene's GT count, green), whatever their scores: these CPU-trained "
               "detectors score below any fixed threshold."),
        header=["pair", "model", "VOC07 mAP", "COCO AP", "COCO AP50"], rows=rows, commands=commands,
        figures=figures, gallery=pics, gallery_models=["teacher", "baseline", "distilled"], notes=notes,
        wall_s=time.time() - t_start,
    ).save(out_dir)
    if not results:
        print("[demo] shapes: no pair has both shipped assets; nothing was run", flush=True)
    for key, scores in results.items():
        print(f"\nSynthShapes {key}, seed {seed}: " + "; ".join(
            f"{n} mAP {100 * s['voc07_map']:.1f} AP {100 * s['coco_ap']:.1f}" for n, s in scores.items()))
    return results
