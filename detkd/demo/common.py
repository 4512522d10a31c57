"""The runner every demo part shares: train one config and export it, or take a shipped model file, and
remember the shell command that reproduces the result (the HTML page prints it beside each row).

A part returns a :class:`PartResult` (its table, figures, image gallery and commands) and saves it as
``part.json`` in its directory; ``detkd.demo.report`` builds ``index.html`` from every ``part.json`` it finds,
so running one part later refreshes the page without losing the others.
"""
from __future__ import annotations

import json
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from detkd.config import load_config

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass
class Model:
    """One model of a demo part: its export, how it was made, and (if trained here) its training log."""

    name: str
    weights: Path
    command: str  # shell command(s) that reproduce the export
    metrics: Path | None = None  # metrics.jsonl of the training run, for loss curves
    distils: bool = False  # trained with a distillation loss (its logged loss is task + distillation)


@dataclass
class PartResult:
    """What a part shows on the page: a table (one row per model, with its command), figures (PNG paths
    relative to the page's directory) and a gallery (title -> one image path per model, same image each)."""

    key: str
    title: str
    intro: str
    header: list[str]
    rows: list[list[str]]
    commands: list[str]
    figures: list[str] = field(default_factory=list)
    gallery: dict[str, list[str]] = field(default_factory=dict)
    gallery_models: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def save(self, part_dir: Path) -> Path:
        path = Path(part_dir) / "part.json"
        path.write_text(json.dumps(asdict(self), indent=1))
        return path


def override_args(overrides: list[str]) -> str:
    return " ".join(shlex.quote(o) for o in overrides)


def train_export(config: str, name: str, out_dir: Path, overrides: list[str], distils: bool = False,
                 evaluate: bool = False) -> tuple[Model, dict]:
    """``detkd train <config> name=<name> train.out_dir=<out_dir> <overrides>`` then ``detkd export``; returns
    the model and the run's summary (its ``eval`` holds the val metrics when ``evaluate``)."""
    from detkd.engine.checkpoint import export_student
    from detkd.experiment import train

    every = [f"name={name}", f"train.out_dir={out_dir}", "train.overwrite=true", "train.progress=false",
             "train.tensorboard=false", *overrides]
    cfg = load_config(config, every)
    t0 = time.time()
    summary = train(cfg, evaluate=evaluate) or {}
    run_dir = Path(out_dir) / name
    export = run_dir / "student.safetensors"
    export_student(run_dir, export)
    print(f"[demo] {name}: trained in {time.time() - t0:.0f}s -> {export}", flush=True)
    command = f"detkd train {config} {override_args(every)} && detkd export {run_dir} --out {export}"
    return Model(name, export, command, run_dir / "metrics.jsonl", distils), summary


def shipped(asset: Path, dest: Path, name: str, recipe: str | None = None) -> Model:
    """Copy a shipped model file (weights and its card) to ``dest``; ``recipe`` says how it was made (default:
    the provenance its card records)."""
    from detkd.models.weights import read_card

    card = asset.with_suffix(".json")
    if not card.is_file():
        raise FileNotFoundError(f"{card} not found: {name} weights need the model card that `detkd export` "
                                "writes beside them")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(asset, dest)
    shutil.copy(card, dest.with_suffix(".json"))
    print(f"[demo] {name}: shipped checkpoint {asset}", flush=True)
    where = asset.resolve()
    repo = ASSETS.parent.parent
    shown = where.relative_to(repo) if where.is_relative_to(repo) else where
    made = recipe or f"the run its card names: {json.dumps(read_card(asset).get('source') or {})}"
    return Model(name, dest, f"# shipped {shown}; made with: {made}")


def card_overrides(card_model: dict, config_model, prefix: str) -> list[str]:
    """``prefix.key=value`` overrides that turn the config's model section into the card's model (only the
    keys that differ), so the command shows what the shipped model is and ``load_config`` builds it."""
    current = json.loads(json.dumps(asdict(config_model)))
    out = []
    for k, v in card_model.items():
        if k == "name" or current.get(k) == v:
            continue
        if k not in current:
            raise ValueError(f"model card key {k!r} is not a field of {type(config_model).__name__}")
        out.append(f"{prefix}.{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}")
    if card_model.get("name") != current.get("name"):
        raise ValueError(f"the model card is a {card_model.get('name')!r} model, the config a "
                         f"{current.get('name')!r} one")
    return out


def model_cost(model: torch.nn.Module, size: int) -> dict:
    """Parameters, forward FLOPs (torch's FlopCounterMode) and median CPU latency at ``size``×``size``."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, size, size) * 255
    model.eval()
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            model(x)
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "gflops": fc.get_total_flops() / 1e9,
        "latency_ms": 1000 * float(np.median(times[2:])),
    }


def loss_figure(models: list[Model], out_png: Path) -> Path | None:
    """Loss curves of the models trained here (the legend says which log task + distillation)."""
    from detkd.eval.plots import plot_loss_curves

    logs = {f"{m.name} ({'task + distillation' if m.distils else 'task'})": m.metrics for m in models
            if m.metrics is not None and m.metrics.is_file() and m.metrics.stat().st_size > 0}
    if not logs:
        return None
    return plot_loss_curves(logs, out_png)


def draw_gallery(models: list[Model], images: list[tuple[str, np.ndarray, np.ndarray]], detect, out_dir: Path,
                 names: list[str] | None = None, min_score: float = 0.3,
                 top_gt: bool = False) -> dict[str, list[Path]]:
    """For each ``(image id, image uint8 RGB, GT boxes xyxy)``, the detections of every model drawn on it
    (``detect(model, image) -> {"boxes", "scores", "labels"}``); returns image id -> one PNG per model.
    ``top_gt``: draw each model's N best detections, N = the image's GT count, whatever their scores (weak
    CPU-trained detectors score below any fixed threshold; this shows what they find and where)."""
    from detkd.infer import draw_detections
    from detkd.models.weights import load_model_file

    out: dict[str, list[Path]] = {image_id: [] for image_id, _, _ in images}
    for m in models:
        net, _ = load_model_file(m.weights)
        for image_id, image, gt in images:
            dets = detect(net, image)
            if top_gt:
                dets = top_detections(dets, len(np.asarray(gt).reshape(-1, 4)))
            out[image_id].append(draw_detections(image, dets, out_dir / f"{image_id}_{m.name}.png", gt_boxes=gt,
                                                 min_score=0.0 if top_gt else min_score, names=names))
    return out


def top_detections(dets: dict, n: int) -> dict:
    """The ``n`` highest-scoring detections of ``dets`` (every per-detection array kept in step)."""
    scores = np.asarray(dets["scores"], dtype=np.float64).reshape(-1)
    keep = np.argsort(-scores, kind="stable")[:n]
    return {k: (np.asarray(v)[keep] if np.ndim(v) and len(v) == len(scores) else v) for k, v in dets.items()}
