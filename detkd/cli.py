"""The ``detkd`` command line. Each command is a few lines that call the library."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="detkd: knowledge distillation for object detectors, face detectors and face recognizers.",
)
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate predictions or models with the official protocols.")
data_app = typer.Typer(no_args_is_help=True, help="Generate the embedded data sets (SynthFaces, SynthIDs, SynthShapes).")
convert_app = typer.Typer(no_args_is_help=True, help="Convert annotations between formats.")
config_app = typer.Typer(no_args_is_help=True, help="Show experiment configs and their keys.")
app.add_typer(eval_app, name="eval")
app.add_typer(data_app, name="data")
app.add_typer(convert_app, name="convert")
app.add_typer(config_app, name="config")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("detkd")
        except PackageNotFoundError:
            v = "unknown (not installed)"
        typer.echo(f"detkd {v}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    """detkd: knowledge distillation for object detectors, face detectors and face recognizers."""


def _fail(msg: str) -> None:
    typer.secho(f"error: {' '.join(str(msg).split())}", fg=typer.colors.RED, err=True)  # always one line
    raise typer.Exit(2)


@app.command()
def train(
    config: str = typer.Argument(..., help="config file or name under configs/, e.g. retinaface/mnet025_synthfaces"),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="a.b=c overrides, type-checked, e.g. train.epochs=3 train.batch_size=8 optim.lr=0.01 "
        "data.root=DIR train.out_dir=DIR train.seed=1 distill.teacher_weights=FILE; every key of a config: "
        "`detkd config show CONFIG`"),
    resume: bool = typer.Option(False, help="continue from <run dir>/last.pt exactly (same config as saved)"),
    overwrite: bool = typer.Option(False, help="replace the run already in the run directory"),
    allow_changed: Optional[List[str]] = typer.Option(
        None, "--allow-changed", help="with --resume: accept a changed config key (or section), e.g. optim.lr"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip evaluation at the end"),
):
    """Train a model (or distil one: the config's `distill` section) and evaluate it.

    The run directory is <train.out_dir>/<name>; `detkd config show CONFIG` lists every key."""
    from detkd.config import ConfigError, load_config
    from detkd.experiment import SetupError
    from detkd.experiment import train as run

    from detkd.registry import UnknownNameError

    try:
        cfg = load_config(config, overrides or [])
    except (ConfigError, KeyError) as e:
        _fail(str(e))
    cfg.train.overwrite = overwrite or cfg.train.overwrite
    cfg.train.allow_changed = list(cfg.train.allow_changed) + list(allow_changed or [])
    try:
        result = run(cfg, resume=resume, evaluate=not no_eval)
    except (UnknownNameError, SetupError) as e:  # e.g. distill.methods=[arcface]; 12 classes vs num_classes=20
        _fail(str(e))
    if int(os.environ.get("RANK", "0") or 0) == 0:  # under torchrun: one summary, not one per rank
        typer.echo(json.dumps(result, indent=2, default=str))


@app.command("distill-chain")
def distill_chain(
    configs: List[str] = typer.Argument(..., help="configs in order, e.g. ld/ta_r101_r50_voc ld/ta_r50_r18_voc, "
                                        "then a.b=c overrides for every stage (the first teacher: "
                                        "distill.teacher_weights=FILE)"),
    out_dir: Optional[Path] = typer.Option(None, help="where chain.json / chain.md go (default <out_dir>/chain)"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip each stage's evaluation"),
):
    """Teacher -> assistant -> student in one command: each stage's exported student teaches the next stage."""
    from detkd.chain import run_chain
    from detkd.config import ConfigError
    from detkd.registry import UnknownNameError

    names = [c for c in configs if "=" not in c]
    overrides = [c for c in configs if "=" in c]
    try:
        result = run_chain(names, overrides, out_dir=out_dir, evaluate=not no_eval)
    except (ConfigError, KeyError, ValueError, FileNotFoundError, UnknownNameError) as e:
        _fail(str(e))
    typer.echo(Path(result["files"][1]).read_text())
    typer.echo(f"wrote {', '.join(result['files'])}")


@eval_app.command("widerface")
def eval_widerface(
    pred_dir: Path = typer.Option(..., help="prediction directory: <event>/<image>.txt (WIDER txt layout)"),
    gt_dir: Path = typer.Option(..., help="directory with wider_face_val.mat and wider_{easy,medium,hard}_val.mat"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object with keys easy, medium, hard"),
    plot_dir: Optional[Path] = typer.Option(None, help="also save PR-curve PNGs here"),
):
    """WIDER FACE easy/medium/hard AP of a prediction directory (official protocol, every quirk)."""
    from detkd.eval.widerface import evaluate_dir

    try:
        ap = evaluate_dir(pred_dir, gt_dir, plot_dir=plot_dir)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    ap = {k: float(ap[k]) for k in ("easy", "medium", "hard")}
    if as_json:
        typer.echo(json.dumps(ap))
    else:
        for k, v in ap.items():
            typer.echo(f"{k:>6} AP: {v:.4f}")


@eval_app.command("voc")
def eval_voc(
    root: List[Path] = typer.Option(..., help="VOCdevkit root (Annotations/, ImageSets/Main/); repeat for several"),
    split: List[str] = typer.Option(..., help="image set name, e.g. test (one, or one per --root)"),
    pred_dir: Path = typer.Option(..., help="results: <class>.txt or comp4_det_<split>_<class>.txt, VOC pixels"),
    metric: str = typer.Option("voc07", help="voc07 (11-point) or area (all points, VOC2010+)"),
    iou_compare: str = typer.Option("devkit", help="devkit (IoU >= thr; MATLAB devkit, mmdet) or strict (>; py-faster-rcnn)"),
    iou_thrs: str = typer.Option("0.5", help="0.5, a comma list, or 0.5:0.95 (mean over ten thresholds, LD's table)"),
    as_json: bool = typer.Option(False, "--json", help="last line: {metric, mAP, per_class, ...}"),
):
    """PASCAL VOC mAP of a results directory (EVAL.md §2.1; equal to py-faster-rcnn's voc_eval with strict)."""
    from detkd.eval.voc import VOCGroundTruth, evaluate_dir, parse_iou_thrs

    try:
        thrs = parse_iou_thrs(iou_thrs)
        gt = VOCGroundTruth.load(root, split)
        res = evaluate_dir(pred_dir, gt, split=split[0] if len(split) == 1 else None, metric=metric,
                           iou_compare=iou_compare, iou_thrs=thrs)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    if res["missing_files"]:
        typer.echo(f"no results file for {len(res['missing_files'])} class(es), scored AP 0: "
                   + ", ".join(res["missing_files"]), err=True)
    if as_json:
        typer.echo(json.dumps(res))
    else:
        for name, ap in res["per_class"].items():
            typer.echo(f"{name:>12} AP: {ap:.4f}")
        typer.echo(f"{'mAP':>12}   : {res['mAP']:.4f} ({metric}, IoU {iou_thrs}, {iou_compare})")


@eval_app.command("coco")
def eval_coco(
    ann: Path = typer.Option(..., help="COCO instances JSON (ground truth)"),
    pred: Path = typer.Option(..., help="COCO results JSON: [{image_id, category_id, bbox [x,y,w,h], score}]"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object with the 12 COCO stats"),
):
    """COCO bbox AP/AR (the 12 COCOeval stats) with faster-coco-eval."""
    from detkd.eval.coco import evaluate_files

    try:
        stats = evaluate_files(ann, pred)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(json.dumps(stats) if as_json else "\n".join(f"{k:>6}: {v:.4f}" for k, v in stats.items()))


@convert_app.command("voc2coco")
def convert_voc2coco(
    root: List[Path] = typer.Argument(..., help="VOCdevkit root(s)"),
    split: List[str] = typer.Option(..., help="image set name (one, or one per root)"),
    out: Path = typer.Option(..., help="output COCO instances JSON"),
):
    """Write VOC annotations as a COCO instances JSON (boxes [xmin-1, ymin-1, w, h]; difficult -> iscrowd)."""
    from detkd.data.voc2coco import voc_to_coco

    try:
        data = voc_to_coco(root, split)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    typer.echo(f"wrote {len(data['images'])} images, {len(data['annotations'])} objects to {out}")


@eval_app.command("detector")
def eval_detector(
    weights: Path = typer.Option(..., help="an exported detkd model (.safetensors with its .json card), or an "
                                 ".onnx from `detkd export --onnx` with --backend onnxruntime"),
    images_dir: Optional[Path] = typer.Option(None, help="face detectors: WIDER-layout image directory "
                                              "<event>/<image>.jpg"),
    gt_dir: Optional[Path] = typer.Option(None, help="face detectors: directory with the four WIDER .mat files"),
    voc_root: Optional[Path] = typer.Option(None, help="object detectors: a VOC-layout root (SynthShapes too)"),
    split: str = typer.Option("test", help="with --voc-root: the image set (ImageSets/Main/<split>.txt)"),
    coco_ann: Optional[Path] = typer.Option(None, help="object detectors: a COCO instances JSON"),
    coco_images: Optional[Path] = typer.Option(None, help="with --coco-ann: the directory of its images"),
    classes: Optional[str] = typer.Option(None, help="object detectors: voc | synthshapes | a,b,c "
                                          "(default: the model card's class_names)"),
    protocol: Optional[str] = typer.Option(None, help="pre/post-processing preset (see `detkd list protocols`); "
                                           "default biubug6-origin for WIDER, torchvision otherwise"),
    max_images: int = typer.Option(0, help="object detectors: >0 scores only the first N images"),
    pred_dir: Optional[Path] = typer.Option(None, help="also write predictions in the WIDER txt layout"),
    as_json: bool = typer.Option(False, "--json"),
    backend: str = typer.Option("eager", help="eager (PyTorch, BatchNorm folded) or onnxruntime"),
    nms: Optional[str] = typer.Option(None, "--nms", help="NMS preset replacing the model's: greedy or "
                                      "cluster-diou-voting (LD's score-voting Cluster-DIoU-NMS); any detector"),
):
    """Score a detector: WIDER easy/medium/hard AP (--images-dir/--gt-dir), or VOC07 mAP and COCO AP of an
    object detector on a VOC root (--voc-root/--split) or a COCO JSON (--coco-ann/--coco-images)."""
    from detkd.engine.checkpoint import describe_model, expect_model_kind, model_kind, weights_model_name
    from detkd.infer import with_nms
    from detkd.runtime import load_inference_model

    generic = voc_root is not None or coco_ann is not None
    if generic and (images_dir is not None or gt_dir is not None):
        _fail("give either --images-dir/--gt-dir (WIDER) or --voc-root / --coco-ann (object detectors)")
    if not generic and (images_dir is None or gt_dir is None):
        _fail("give --images-dir and --gt-dir (WIDER), --voc-root DIR [--split S], or --coco-ann F --coco-images D")
    expect_model_kind(weights, ("face detector", "detector"), "--weights")  # names both kinds
    name = weights_model_name(weights) if weights.suffix != ".onnx" else None
    kind = model_kind(name) if name else None
    if generic and kind == "face detector":
        _fail(f"--weights {weights} is {describe_model(name)}: score it on WIDER-layout data with --images-dir "
              "and --gt-dir; --voc-root / --coco-ann score object detectors")
    if not generic and kind == "detector":
        _fail(f"--weights {weights} is {describe_model(name)}: --images-dir / --gt-dir score face detectors on "
              "WIDER FACE; give --voc-root DIR [--split S] or --coco-ann F --coco-images D")
    try:
        proto = with_nms(protocol or ("torchvision" if generic else "biubug6-origin"), nms)
        model, card = load_inference_model(weights, backend, kind="detector")
    except (FileNotFoundError, ValueError, KeyError, ImportError) as e:
        _fail(str(e))
    if generic:
        from detkd.eval_detector import evaluate_model, model_class_names

        try:
            names = model_class_names(card, classes) if voc_root is not None else ()
            res = evaluate_model(model, names, proto, voc_root=voc_root, split=split,
                                 coco_ann=coco_ann, coco_images=coco_images, max_images=max_images)
        except (FileNotFoundError, ValueError, KeyError) as e:
            _fail(str(e))
        if as_json:
            typer.echo(json.dumps(res))
        else:
            for name, ap in res["per_class"].items():
                typer.echo(f"{name:>14} AP: {ap:.4f}")
            typer.echo(f"{'VOC07 mAP':>14}   : {res['voc07_map']:.4f}")
            if "coco_ap" in res:
                typer.echo(f"{'COCO AP':>14}   : {res['coco_ap']:.4f}")
        return
    from detkd.experiment import evaluate_widerface

    ap = evaluate_widerface(model, images_dir, gt_dir, proto, pred_dir=pred_dir)
    typer.echo(json.dumps(ap) if as_json else "\n".join(f"{k:>6} AP: {v:.4f}" for k, v in ap.items()))


@eval_app.command("verification")
def eval_verification(
    weights: Path = typer.Option(..., help="an exported face recognizer (.safetensors with its .json card)"),
    bin: Path = typer.Option(..., "--bin", help="insightface verification .bin (LFW / CFP-FP / AgeDB layout)"),
    as_json: bool = typer.Option(False, "--json"),
):
    """10-fold verification accuracy (flip-sum embeddings) and TAR@FAR of a face recognizer."""
    from detkd.eval.verification import describe, summary, verify_weights

    try:
        res = verify_weights(weights, bin)
    except (FileNotFoundError, ValueError, KeyError) as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps({k: v for k, v in summary(res).items() if isinstance(v, (int, float))}))
    else:
        typer.echo(describe(res, bin.name))


def _protocol_help() -> str:
    """Every detect protocol, from ``detkd.names`` (kept equal to the protocol tables by tests/test_startup.py)."""
    from detkd.names import DET_PROTOCOLS, FACE_PROTOCOLS

    return f"face detectors: {', '.join(FACE_PROTOCOLS)}; object detectors: {', '.join(DET_PROTOCOLS)}"


@app.command()
def detect(
    images: List[Path] = typer.Argument(..., help="image files (inputs from several folders: the outputs mirror "
                                        "the input tree; outputs that would clash are refused)"),
    weights: Path = typer.Option(..., help="an exported detkd detector (.safetensors + .json card), or an .onnx "
                                 "from `detkd export --onnx` with --backend onnxruntime"),
    protocol: str = typer.Option("biubug6-origin", help="pre/post-processing preset: " + _protocol_help()),
    out_dir: Path = typer.Option(..., help="output directory"),
    format: str = typer.Option("png", "--format", help="face detectors: widerface-txt | png; "
                               "object detectors: png | voc | coco (D/detections.json)"),
    backend: str = typer.Option("eager", help="eager (PyTorch, BatchNorm folded) or onnxruntime (one-stage "
                                "detectors exported with `detkd export --onnx`)"),
    event: Optional[str] = typer.Option(None, help="widerface-txt: the WIDER event folder to write into, e.g. "
                                        "0--Parade (default: each image's parent folder name; `eval widerface` "
                                        "scores files outside the ground truth's events 0)"),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="png: draw boxes scoring at least this "
                                              "[default: 0.5 for face detectors, 0.3 for object detectors]"),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress",
                                            help="progress bar over the images [default: on a terminal]"),
    nms: Optional[str] = typer.Option(None, "--nms", help="NMS preset replacing the model's: greedy or "
                                      "cluster-diou-voting (LD's score-voting Cluster-DIoU-NMS); any detector"),
):
    """Detect faces or objects in images; write WIDER txt, VOC or COCO results, or PNGs with boxes and scores."""
    from detkd.infer import with_nms
    from detkd.infer_detector import DET_PROTOCOLS

    if min_score is not None and not 0.0 <= min_score <= 1.0:
        _fail(f"--min-score must be in [0, 1], got {min_score}")
    if event is not None and format != "widerface-txt":
        _fail(f"--event is for --format widerface-txt, not {format!r}")
    try:
        proto = with_nms(protocol, nms)
    except ValueError as e:
        _fail(str(e))
    if protocol in DET_PROTOCOLS:
        from detkd.infer_detector import detect_files as detect_objects

        try:
            written = detect_objects(weights, proto, out_dir, format, images, backend=backend, progress=progress,
                                     **({} if min_score is None else {"min_score": min_score}))
        except (FileNotFoundError, ValueError, KeyError, ImportError) as e:
            _fail(str(e))
        typer.echo(f"wrote {len(set(written))} file(s) to {out_dir}")
        return
    from detkd.infer import detect_files

    if format not in ("png", "widerface-txt"):
        _fail(f"--format must be png or widerface-txt with protocol {protocol!r}, got {format!r}")
    try:
        written = detect_files(weights, proto, out_dir, format, images, backend=backend, event=event,
                               progress=progress, **({} if min_score is None else {"min_score": min_score}))
    except (FileNotFoundError, ValueError, KeyError, ImportError) as e:
        _fail(str(e))
    typer.echo(f"wrote {len(set(written))} file(s) to {out_dir}")
    if format == "widerface-txt":
        from detkd.detect_outputs import non_wider_events

        odd = non_wider_events([w.parent.name for w in written])
        if odd:
            typer.echo(f"note: event folder(s) {', '.join(odd)} are not WIDER events (N--Name); `eval widerface` "
                       "against the WIDER ground truth scores them 0 (pass --event)", err=True)


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        _fail(f"--size must be HxW (e.g. 640x640), got {text!r}")
    return h, w


@app.command()
def export(
    run: Path = typer.Argument(..., help="a run directory (uses final.pt or last.pt), a checkpoint file, or (with "
                                "--onnx) an exported .safetensors model file with its .json card"),
    out: Optional[Path] = typer.Option(None, help="output .safetensors (a .json model card is written beside it)"),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="write an ONNX graph here (+ .onnx.json card), checked "
                                        "against ONNX Runtime"),
    dynamic_size: bool = typer.Option(False, "--dynamic-size", help="ONNX: any input height/width"),
    opset: int = typer.Option(17, help="ONNX opset"),
    with_nms: bool = typer.Option(False, "--with-nms", help="ONNX, detectors: include decoding and NMS of --protocol"),
    protocol: Optional[str] = typer.Option(None, help="ONNX --with-nms: the post-processing preset baked in "
                                           "(default: biubug6-origin for RetinaFace, torchvision for RetinaNet/GFL)"),
    input_dtype: str = typer.Option("float32", help="ONNX input dtype: float32 or uint8 (RGB 0..255 either way)"),
    size: str = typer.Option("640x640", help="ONNX detectors: traced HxW (the fixed size without --dynamic-size)"),
    half: bool = typer.Option(False, "--half", help="--out: store float tensors as float16 (half the size; loading "
                              "upcasts to float32, outputs move by float16 rounding)"),
):
    """Export the student only (no teacher, no adapters) as safetensors + JSON model card, and/or as ONNX."""
    if out is None and onnx is None:
        _fail("give --out F.safetensors and/or --onnx F.onnx")
    if out is not None:
        from detkd.engine.checkpoint import export_student

        try:
            export_student(run, out, half=half)
        except (FileNotFoundError, ValueError) as e:
            _fail(str(e))
        typer.echo(f"exported student to {out} (+ {Path(out).with_suffix('.json').name})")
    if onnx is not None:
        from detkd.export import ExportOptions, export_onnx

        opts = ExportOptions(opset=opset, dynamic_size=dynamic_size, size=_parse_size(size), with_nms=with_nms,
                             protocol=protocol, input_dtype=input_dtype)
        try:
            card = export_onnx(out if out is not None else run, onnx, opts)
        except (FileNotFoundError, ValueError, KeyError, ImportError) as e:
            _fail(str(e))
        typer.echo(f"exported ONNX to {onnx} (+ {onnx.name}.json); ONNX Runtime vs eager: "
                   + json.dumps(card.get("parity", {})))


IMPORT_KINDS = ("retinaface-biubug6", "torchvision-fasterrcnn", "jwyang-fasterrcnn")


@app.command("import-weights")
def import_weights(
    kind: str = typer.Argument(..., help="retinaface-biubug6 (biubug6 / TDKD / Face-Detector-1MB), "
                               "torchvision-fasterrcnn (fasterrcnn_*_fpn state dict), "
                               "jwyang-fasterrcnn (faster-rcnn.pytorch VGG, FGFI), "
                               "torchvision-retinanet (retinanet_resnet50_fpn state dict), "
                               "mmdet-gfl (mmdet GFL / LD checkpoints)"),
    src: Path = typer.Argument(..., help="foreign checkpoint (.pth or .safetensors)"),
    out: Path = typer.Option(..., help="output .safetensors (model card .json beside it)"),
    activation: Optional[str] = typer.Option(
        None, help="retinaface-biubug6 only: leaky0.1 (biubug6 HEAD) or relu (first release, TDKD)"),
    width: float = typer.Option(0.25, help="retinaface-biubug6: MobileNetV1 width (0.25 student, 0.75 teacher)"),
    task_convs: bool = typer.Option(False, help="retinaface-biubug6: per-task conv blocks (TDKD teacher)"),
):
    """Convert a foreign checkpoint into detkd's safetensors + model card, with a strict key check."""
    from detkd.engine.checkpoint import describe_model, model_kind, weights_model_name
    from detkd.models import rcnn_weights
    from detkd.models.import_onestage import IMPORTERS
    from detkd.models.weights import import_retinaface_biubug6

    name = weights_model_name(src) if src.suffix == ".safetensors" else None  # read from its card, if any
    if name is not None and model_kind(name) != "model":  # a registered detkd model
        _fail(f"{src} is already a detkd model file ({describe_model(name)}, card {src.with_suffix('.json')}); "
              "import-weights converts foreign checkpoints: use this file as it is")

    if kind in IMPORTERS:
        try:
            card = IMPORTERS[kind](src, out)
        except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
            _fail(str(e))
        typer.echo(json.dumps(card, indent=2, default=str))
        return
    if kind not in IMPORT_KINDS:
        _fail(f"unknown checkpoint kind {kind!r}; supported: {', '.join([*IMPORT_KINDS, *IMPORTERS])}")
    if kind == "retinaface-biubug6" and activation not in ("relu", "leaky0.1"):
        _fail("retinaface-biubug6 needs --activation relu or leaky0.1 (the keys cannot tell)")
    try:
        if kind == "retinaface-biubug6":
            card = import_retinaface_biubug6(src, activation, out, width=width, task_convs=task_convs)
        elif kind == "torchvision-fasterrcnn":
            card = rcnn_weights.import_torchvision_fasterrcnn(src, out)
        else:
            card = rcnn_weights.import_jwyang_fasterrcnn(src, out)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        _fail(str(e))
    typer.echo(json.dumps(card, indent=2, default=str))


@data_app.command("synthfaces")
def data_synthfaces(
    out: Path = typer.Argument(..., help="output root (WIDER layout)"),
    seed: int = typer.Option(0, help="every pixel and box is a function of the seed; train on it with "
                             "data.root=OUT data.data_seed=SEED"),
    train: int = typer.Option(600, "--train", help="number of train scenes (data.n_train)"),
    val: int = typer.Option(150, "--val", help="number of val scenes (data.n_val)"),
):
    """Write SynthFaces: face-detection scenes in WIDER FACE layout with easy/medium/hard .mat subsets."""
    from detkd.data.synthfaces import write_synthfaces

    typer.echo(f"SynthFaces written to {write_synthfaces(out, seed=seed, n_train=train, n_val=val)}")
    keys = [f"data.root={out}", *(f"{k}={v}" for k, v, d in (("data.data_seed", seed, 0), ("data.n_train", train, 600),
                                                               ("data.n_val", val, 150)) if v != d)]
    typer.echo(f"train on it with: detkd train retinaface/mnet025_synthfaces {' '.join(keys)}")


@data_app.command("synthids")
def data_synthids(
    out: Path = typer.Argument(..., help="output root (identity folders + val.bin); the facerec/*_synthids configs "
                               "read data/synthids48 written with --img-size 48"),
    seed: int = 0,
    img_size: int = typer.Option(64, "--img-size", help="face crop side in pixels"),
):
    """Write SynthIDs: identity folders for face recognition and an LFW-style verification .bin."""
    from detkd.data.synthids import write_synthids

    if img_size < 8:
        _fail(f"--img-size must be at least 8, got {img_size}")
    typer.echo(f"SynthIDs written to {write_synthids(out, seed=seed, img_size=img_size)}")


@data_app.command("synthshapes")
def data_synthshapes(
    out: Path = typer.Argument(..., help="output root: VOC layout + annotations/instances_{train,val}.json"),
    seed: int = typer.Option(0, help="every pixel and box is a function of the seed"),
    train: int = typer.Option(1500, "--train", help="number of train scenes"),
    val: int = typer.Option(500, "--val", help="number of val scenes"),
    preset: str = typer.Option("full", help="knob set: full (as designed: tiny objects, crowds) or cpu (fewer, "
                               "larger objects in 256-320 px scenes: what the CPU-sized *_lite_synthshapes configs "
                               "train on, data.preset=cpu) or easy (cpu with plain fills, half the backgrounds "
                               "plain, no blur or crowds: a diagnostic set)"),
):
    """Write SynthShapes: multi-class shape scenes in VOC layout and as COCO instances JSON."""
    from detkd.data.synthshapes import preset_config, write_synthshapes

    try:
        cfg = preset_config(preset)
    except ValueError as e:
        _fail(str(e))
    typer.echo(f"SynthShapes written to {write_synthshapes(out, seed=seed, n_train=train, n_val=val, cfg=cfg)}")


@app.command("pretrain-trunk")
def pretrain_trunk(
    out: Path = typer.Argument(..., help="output .safetensors (a JSON card is written beside it); load it into a "
                               "detector with train.backbone_init=OUT"),
    arch: str = typer.Option("resnet", help="resnet (depth 18/34/50/101) or vgg (11/13/16, BatchNorm, C4)"),
    depth: int = typer.Option(18, help="trunk depth"),
    width: float = typer.Option(0.25, help="channel scale of every stage, as the detector config's model.width"),
    scenes: int = typer.Option(4000, help="SynthShapes scenes (pretraining split) to cut object crops from"),
    epochs: int = typer.Option(12, help="classifier epochs over the crops"),
    size: int = typer.Option(64, help="crop side in px"),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(0.1, help="peak SGD learning rate (warm-up, then cosine decay)"),
    preset: str = typer.Option("cpu", help="SynthShapes knob set the scenes are drawn with"),
    seed: int = typer.Option(0),
    workers: int = typer.Option(2, help="processes rendering the scenes"),
):
    """Pretrain a detector trunk on SynthShapes object crops (the embedded stand-in for ImageNet).

    Crops of every annotated object and of background patches ('none') from scenes no detector trains or
    validates on; the trunk learns them as a 13-way classifier and is saved in torchvision's layout without the
    classifier. Example: detkd pretrain-trunk runs/trunks/r18_w025.safetensors --width 0.25"""
    from detkd.pretrain_trunk import PretrainConfig, TrunkSpec, save_trunk, shape_crops, train_trunk

    spec, cfg = TrunkSpec(arch, depth, width), PretrainConfig(scenes=scenes, epochs=epochs, size=size,
                                                              batch_size=batch_size, lr=lr, preset=preset, seed=seed)
    if out.suffix != ".safetensors":
        _fail(f"{out}: the output must end in .safetensors")
    try:
        spec.build()
        crops = shape_crops(scenes, preset, seed, cfg.size, workers=workers)
    except ValueError as e:
        _fail(str(e))
    net, card = train_trunk(spec, cfg, crops, log=typer.echo)
    save_trunk(net, card, out)
    typer.echo(f"val accuracy {card['val_acc']:.3f} (chance {card['chance']:.3f}) on {card['n_val']} crops; "
               f"{card['train_s']:.0f} s; trunk written to {out}")


@app.command("list")
def list_(what: str = typer.Argument(
        "all", help="models | datasets | methods | objectives | evaluators | configs | protocols | all"),
        matrix: bool = typer.Option(False, "--matrix", help="with `methods`: the method x detector table (runs, or "
                                    "the reason each method declares), from tiny instances of every family"),
        markdown: bool = typer.Option(False, "--markdown", help="with --matrix: a markdown table (the README's)")):
    """List registered models, datasets, detection distillation methods, face-recognition objectives,
    evaluators, configs and inference protocols."""
    from detkd.config import list_configs
    from detkd.names import DET_PROTOCOLS, FACE_PROTOCOLS, NAMES  # torch-free; equal to the registry (tested)

    if matrix:
        if what != "methods":
            _fail(f"--matrix goes with `detkd list methods`, not {what!r}")
        from detkd.distill.matrix import format_table, support_table

        typer.echo(format_table(support_table(), markdown=markdown), nl=False)
        return
    sections = {**{k: list(v) for k, v in NAMES.items()}, "configs": list_configs(),
                "protocols": sorted([*FACE_PROTOCOLS, *DET_PROTOCOLS])}
    if what != "all" and what not in sections:
        _fail(f"unknown section {what!r}; choose from {', '.join(sections)} or all")
    titles = {"methods": "methods (detection distillation, distill.methods=[...])",
              "objectives": "objectives (face recognition, distill.method=...)"}
    for name, items in sections.items():
        if what in ("all", name):
            typer.echo(f"{titles.get(name, name)}:")
            for it in items:
                typer.echo(f"  {it}")


@app.command()
def compare(
    inputs: List[Path] = typer.Argument(..., help="run directories, folders of runs, or benchmark JSON files "
                                        "(several seeds)"),
    control: Optional[str] = typer.Option(None, help="the control's name (default: control, baseline_extra or "
                                          "baseline, the first present)"),
    metric: Optional[List[str]] = typer.Option(None, help="metrics to compare (default: every common one)"),
    model: Optional[List[str]] = typer.Option(None, help="distilled models to compare (default: every distilled one)"),
    diagnose: bool = typer.Option(False, "--diagnose", help="also: each distillation term's scale against the task "
                                  "loss over training (from metrics.jsonl) and whether the teacher beats the students"),
    as_json: bool = typer.Option(False, "--json", help="last line: one JSON object with the rows (and diagnosis)"),
):
    """Did distillation help? Control vs distilled per seed, mean ± sample std, the paired gain with 2σ and a
    verdict (a gain counts when the mean per-seed gain is above twice its sample std and every seed gains)."""
    from detkd import compare as C
    from detkd.errors import UserError

    try:
        res = C.load_results(inputs)
        result = C.compare(res, control, metric or None, model or None)
        diag = C.diagnose(res, result) if diagnose else None
    except (UserError, FileNotFoundError) as e:
        _fail(str(e))
    if as_json:
        payload = {**result, **({"diagnose": diag} if diag is not None else {})}
        typer.echo(json.dumps(C.json_safe(payload), default=str, allow_nan=False))
        return
    typer.echo(C.format_compare(result))
    if diag is not None:
        typer.echo(C.format_diagnose(diag))


@app.command()
def demo(
    parts: Optional[List[str]] = typer.Argument(None, help="faces, shapes, facerec or all (default: all)"),
    out_dir: Path = typer.Option(Path("runs/demo"), help="everything is written under this directory"),
    quick: bool = typer.Option(False, help="a much shorter schedule (smoke test, numbers meaningless)"),
    seed: int = typer.Option(0, help="training seed"),
    retrain_teacher: bool = typer.Option(
        False, help="faces: train the teacher here (90 epochs, about 40 min on 2 cores) instead of the shipped one"),
    retrain_baseline: bool = typer.Option(
        False, help="faces: train the 30-epoch baseline student here (about 6 min) instead of the shipped one"),
):
    """Teacher -> baseline -> distilled students on the embedded data sets; writes OUT_DIR/index.html.

    faces: RetinaFace on SynthFaces (control / TDKD / feat fine-tunes of the shipped baseline); shapes: FGFI,
    DeFeat and LD on SynthShapes with the shipped teachers and baselines; facerec: ArcFace, MarginDistillation
    and its four baselines on SynthIDs. All three take under 20 minutes on 2 CPU cores.
    """
    from detkd.demo import PARTS, run_parts

    chosen = list(PARTS) if not parts or "all" in parts else list(parts)
    run_parts(chosen, out_dir, quick=quick, seed=seed, retrain_teacher=retrain_teacher,
              shipped_baseline=not retrain_baseline)


@config_app.command("show")
def config_show(
    name: str = typer.Argument(..., help="config file or name under configs/ (see `detkd list configs`)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="a.b=c overrides, applied before showing"),
):
    """Print a config: every key (usable as an a.b=c override), its value and its type."""
    from detkd.config import format_config, load_config

    typer.echo(format_config(load_config(name, overrides or [])))


def main() -> None:
    """Entry point: user mistakes (``detkd.errors.UserError`` and missing / unreadable files) print one line
    ``error: ...`` to stderr and exit 2; Ctrl-C exits 130 (training saves ``last.pt`` first)."""
    from detkd.errors import EXIT_USER_ERROR, UserError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        app()
    except (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        msg = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.strerror}: {e.filename}"
        if "Original Traceback" in msg:  # re-raised from a DataLoader worker: keep the original message
            msg = msg.rsplit(f"{type(e).__name__}: ", 1)[-1]
        typer.secho(f"error: {' '.join(msg.split())}", fg=typer.colors.RED, err=True)
        sys.exit(EXIT_USER_ERROR)


if __name__ == "__main__":
    main()
