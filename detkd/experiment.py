"""From an ``ExperimentConfig`` to a finished run: data, model, task, evaluation, trainer.

This is the recipe layer (like torchvision's ``references/``): every piece it calls is a library function
that can be used on its own.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detkd.config import DetEvalConfig, ExperimentConfig
from detkd.registry import build, build_model

log = logging.getLogger(__name__)


class DetectionTask(nn.Module):
    """Plain detector training: the task losses of the student's own ``DetOutput``."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, batch):
        images, targets, _ = batch
        return self.student(images, targets).losses


# ------------------------------------------------------------------------------------------------ data


def build_train_set(cfg: ExperimentConfig):
    """The training split; augmentation randomness is a pure function of (seed, epoch, index)."""
    seed = cfg.data.seed if cfg.data.seed >= 0 else cfg.train.seed
    return build("dataset", cfg.data, split="train", seed=seed)


def val_paths(cfg: ExperimentConfig) -> tuple[Path, Path]:
    ev = cfg.eval or DetEvalConfig()
    root = Path(cfg.data.root)
    images = Path(ev.images_dir) if ev.images_dir else root / "val" / "images"
    gt = Path(ev.gt_dir) if ev.gt_dir else root / "val" / "gt"
    return images, gt


# ------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate_widerface(
    model: nn.Module,
    images_dir,
    gt_dir,
    protocol: str = "biubug6-origin",
    max_images: int = 0,
    pred_dir=None,
    plot_dir=None,
    progress: bool = True,
) -> dict:
    """Detect on every GT image, evaluate with the WIDER protocol; rank-aware (shards, gathers to rank 0).

    Returns ``{"easy", "medium", "hard"}`` AP on rank 0 (empty dict on other ranks).
    """
    from tqdm import tqdm

    from detkd.data.widerface import WiderFaceVal
    from detkd.engine import dist
    from detkd.eval.widerface import WiderFaceEvaluator, dets_to_xywhs, write_txt
    from detkd.infer import PROTOCOLS, detect_image

    proto = PROTOCOLS[protocol]
    val = WiderFaceVal(images_dir, gt_dir)
    n = len(val) if max_images <= 0 else min(max_images, len(val))
    rank, world = dist.rank(), dist.world_size()
    was_training = model.training
    model.eval()
    mine = []
    for i in tqdm(range(rank, n, world), desc="eval", disable=not progress or rank != 0, leave=False):
        image, meta = val[i]
        d = detect_image(model, image, proto)
        boxes, scores = d["boxes"].cpu().numpy(), d["scores"].cpu().numpy()
        mine.append((meta["event"], meta["name"], boxes, scores))
    model.train(was_training)
    gathered = dist.gather_objects(mine)
    if rank != 0:
        return {}
    evaluator = WiderFaceEvaluator(val.gt, images=[val.gt.images[i] for i in range(n)])
    for part in gathered:
        for event, name, boxes, scores in part:
            evaluator.process(event, name, dets_to_xywhs(boxes, scores))
            if pred_dir is not None:
                write_txt(pred_dir, event, name, boxes, scores)
    ap = evaluator.evaluate()
    if plot_dir is not None:
        from detkd.eval.plots import plot_pr_curves

        Path(plot_dir).mkdir(parents=True, exist_ok=True)
        plot_pr_curves(evaluator.curves, Path(plot_dir) / "pr_curves.png", title=f"WIDER protocol ({protocol})")
        np.savez(Path(plot_dir) / "pr_curves.npz", **{f"{k}_{j}": v for k, c in evaluator.curves.items()
                                                    for j, v in zip(("rec", "prec"), c)})
    return {k: float(ap[k]) for k in ("easy", "medium", "hard")}


def make_evaluator(cfg: ExperimentConfig):
    ev = cfg.eval or DetEvalConfig()
    images_dir, gt_dir = val_paths(cfg)

    def evaluate(student, epoch):
        plot_dir = cfg.run_dir / "eval" if epoch is None or epoch + 1 >= cfg.train.epochs else None
        return evaluate_widerface(student, images_dir, gt_dir, ev.protocol, ev.max_images, plot_dir=plot_dir)

    return evaluate


# -------------------------------------------------------------------------------------------- building


def build_task(cfg: ExperimentConfig) -> nn.Module:
    """The trainable module for this config: a plain ``DetectionTask`` or a ``DistillTask``."""
    student = build_model(cfg.model)  # train.init_weights is loaded by the Trainer
    if cfg.train.backbone_init:
        from detkd.models.weights import load_backbone_imagenet

        load_backbone_imagenet(student, cfg.train.backbone_init, trust=cfg.train.trust_pickle)
    if cfg.distill is None:
        return DetectionTask(student)
    from detkd.distill.distiller import build_distill_task
    from detkd.engine.checkpoint import load_weights_into
    from detkd.errors import UserError

    d = cfg.distill
    if not d.teacher_weights:
        raise UserError("distill.teacher_weights is empty: a distillation run needs a trained teacher",
                        key="distill.teacher_weights")
    teacher = build_model(d.teacher)
    load_weights_into(teacher, d.teacher_weights, "distill.teacher_weights", expected=d.teacher.name)
    return build_distill_task(d, student, teacher)


def train(cfg: ExperimentConfig, resume: bool = False, evaluate: bool = True) -> dict:
    """Train (or distil) as the config says, evaluate, and write ``summary.json`` in the run directory."""
    import dataclasses

    from detkd.engine.loop import Trainer
    from detkd.engine.rundir import check_run_dir

    # fail before building anything (teacher, cache) when the run dir holds a run or the resumed config changed
    check_run_dir(cfg.run_dir, dataclasses.asdict(cfg), resume=resume or cfg.train.resume,
                  overwrite=cfg.train.overwrite, allow_changed=cfg.train.allow_changed)
    if cfg.task != "detection":
        from detkd.distill.face import train_facerec

        return train_facerec(cfg, resume=resume)
    torch.manual_seed(cfg.train.seed)
    task = build_task(cfg)
    train_set = build_train_set(cfg)
    from detkd.data.loader import collate_detection

    if cfg.distill is not None:  # fail fast: taps, shapes, identical inputs, teacher better than chance
        sample = collate_detection([train_set[i] for i in range(min(2, len(train_set)))])
        task.check_setup(sample, teacher_loaded=True, accuracy_batches=[sample])
    trainer = Trainer(cfg, task, train_set, evaluate=make_evaluator(cfg) if evaluate else None,
                      collate_fn=collate_detection)
    return trainer.fit(resume=resume)
