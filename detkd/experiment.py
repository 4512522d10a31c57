"""From an ``ExperimentConfig`` to a finished run: data, model, task, evaluation, trainer.

This is the recipe layer (like torchvision's ``references/``): every piece it calls is a library function
that can be used on its own.
"""
from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn

from detkd.errors import UserError
from detkd.config import DetEvalConfig, ExperimentConfig
from detkd.data.loader import batch_image_sizes
from detkd.registry import build, build_model, lookup

log = logging.getLogger(__name__)


class DetectionTask(nn.Module):
    """Plain detector training: the task losses of the student's own ``DetOutput``."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, batch):
        images, targets, _ = batch
        return self.student(images, targets, image_sizes=batch_image_sizes(batch)).losses


# ------------------------------------------------------------------------------------------------ data


# DetDataConfig fields that configure batching, not the dataset builder
COLLATE_FIELDS = ("size_divisor",)


def build_train_set(cfg: ExperimentConfig):
    """The training split; augmentation randomness is a pure function of (seed, epoch, index)."""
    import dataclasses

    seed = cfg.data.seed if cfg.data.seed >= 0 else cfg.train.seed
    return lookup("dataset", cfg.data.name)(**{**dataset_kwargs(cfg), "split": "train", "seed": seed})


def dataset_kwargs(cfg: ExperimentConfig) -> dict:
    """The ``data`` fields that go to the data set builder ``cfg.data.name``. A field the builder does not take
    (``data.data_seed`` of a SynthFaces config switched to ``data.name=widerface``) is left out while it keeps
    its default, and refused when it was set: it would otherwise be ignored without a word."""
    import inspect

    builder = lookup("dataset", cfg.data.name)
    params = inspect.signature(builder).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {}
    for f in dataclasses.fields(cfg.data):
        if f.name == "name" or f.name in COLLATE_FIELDS:
            continue
        value = getattr(cfg.data, f.name)
        if takes_all or f.name in params:
            kwargs[f.name] = value
        elif f.default is dataclasses.MISSING or value != f.default:
            raise UserError(f"data.{f.name}={value!r}: the {cfg.data.name!r} data set (data.name) has no such "
                            f"setting; leave it at its default ({f.default!r}) or choose a data set that takes it",
                            key=f"data.{f.name}")
    return kwargs


def build_collate(cfg: ExperimentConfig):
    """``collate_detection`` padding to ``data.size_divisor`` (32 when the data config has no such field)."""
    from detkd.data.loader import detection_collate

    return detection_collate(getattr(cfg.data, "size_divisor", 32))


def build_val_set(cfg: ExperimentConfig):
    """The evaluation split of ``cfg.data``: ``(image uint8 [H, W, 3], meta)`` samples; ``eval.images_dir`` /
    ``eval.gt_dir`` go to the data set builder when set."""
    ev = cfg.eval or DetEvalConfig()
    extra = {k: v for k, v in (("images_dir", ev.images_dir), ("gt_dir", ev.gt_dir)) if v}
    return lookup("dataset", cfg.data.name)(**{**dataset_kwargs(cfg), **extra, "split": "val"})


# ------------------------------------------------------------------------------------------ evaluation


def evaluate_detector(model: nn.Module, dataset, evaluator, protocol: str = "biubug6-origin", *,
                      max_images: int = 0, batch_size: int = 1, num_workers: int = 0,
                      progress: bool = True, desc: str = "eval") -> dict:
    """Detect on ``dataset`` (``(image uint8 [H, W, 3], meta)`` samples) with the test ``protocol`` and evaluate.

    Batched through a ``DataLoader`` and ``detkd.eval.base.inference_on_dataset``; under DDP each rank takes a
    strided shard and the evaluator gathers to rank 0. ``max_images > 0``: only the first N samples. Returns
    the evaluator's metrics on rank 0, ``{}`` on other ranks. ``batch_size`` 1 (the default) reproduces the
    reference one-image test bit for bit; larger batches run same-size images together, which moves scores by
    float rounding (about 1e-7) and so can move an AP in its last digits.
    """
    from detkd.eval.base import inference_on_dataset, shard_indices
    from detkd.infer import ProtocolImages, collate_images, detect_batch, get_protocol

    proto = get_protocol(protocol)
    n = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    images = ProtocolImages(dataset, proto, shard_indices(n))
    loader = torch.utils.data.DataLoader(images, batch_size=max(1, batch_size), shuffle=False,
                                         num_workers=num_workers, collate_fn=collate_images)

    def predict(m: nn.Module, batch):
        ims, metas = batch
        return metas, detect_batch(m, ims, metas, proto)

    return inference_on_dataset(model, loader, evaluator, predict, progress=progress, desc=desc)


def evaluate_widerface(
    model: nn.Module,
    images_dir,
    gt_dir,
    protocol: str = "biubug6-origin",
    max_images: int = 0,
    pred_dir=None,
    plot_dir=None,
    progress: bool = True,
    batch_size: int = 1,
    desc: str = "eval",
) -> dict:
    """Detect on every GT image of a WIDER-layout val set, evaluate with the WIDER protocol; rank-aware.

    Returns ``{"easy", "medium", "hard"}`` AP on rank 0 (empty dict on other ranks). ``plot_dir``: PR curves
    (``pr_curves.png`` / ``.npz``); ``pred_dir``: the standard txt files; ``desc``: the progress bar's label.
    """
    from detkd.data.widerface import WiderFaceVal
    from detkd.eval.base import build_evaluator

    val = WiderFaceVal(images_dir, gt_dir)
    evaluator = build_evaluator("widerface", dataset=val, max_images=max_images, pred_dir=pred_dir)
    ap = evaluate_detector(model, val, evaluator, protocol, max_images=max_images, batch_size=batch_size,
                           progress=progress, desc=desc)
    if not ap:
        return {}
    if plot_dir is not None:
        evaluator.save_plots(plot_dir, f"WIDER protocol ({getattr(protocol, 'name', protocol)})")
    return {k: float(ap[k]) for k in ("easy", "medium", "hard")}


def build_evaluators(ev: DetEvalConfig, dataset):
    """``ev.evaluator`` on ``dataset``, or, with ``ev.also`` (e.g. ``["coco"]``), an ``EvaluatorGroup`` whose
    extra members' metrics are prefixed ``"<name>/"`` (``"coco/AP"`` beside VOC's ``"mAP"``)."""
    from detkd.eval.base import build_evaluator
    from detkd.eval.group import EvaluatorGroup

    first = build_evaluator(ev.evaluator, dataset=dataset, max_images=ev.max_images)
    also = [name for name in getattr(ev, "also", ()) if name != ev.evaluator]
    if not also:
        return first
    return EvaluatorGroup({"": first, **{f"{name}/": build_evaluator(name, dataset=dataset, max_images=ev.max_images)
                                         for name in also}})


def make_evaluator(cfg: ExperimentConfig):
    """``evaluate(student, epoch) -> metrics`` for the Trainer: ``cfg.eval.evaluator`` (and ``cfg.eval.also``)
    on the val split."""
    ev = cfg.eval or DetEvalConfig()

    def evaluate(student, epoch):
        val = build_val_set(cfg)
        evaluator = build_evaluators(ev, val)
        metrics = evaluate_detector(student, val, evaluator, ev.protocol, max_images=ev.max_images,
                                    batch_size=ev.batch_size, num_workers=ev.num_workers)
        last = epoch is None or epoch + 1 >= cfg.train.epochs
        main = evaluator.members[""] if hasattr(evaluator, "members") else evaluator
        if metrics and last and hasattr(main, "save_plots"):
            main.save_plots(cfg.run_dir / "eval", f"{ev.evaluator} ({ev.protocol})")
        return {k: float(v) for k, v in metrics.items()}

    return evaluate


# -------------------------------------------------------------------------------------------- building


def _trunk_init(load, student: nn.Module, path: str) -> None:
    """``load(student, path)``; a trunk that does not fit (e.g. after a ``model.width`` override) names the way out."""
    from detkd.errors import UserError

    try:
        load(student, path)
    except ValueError as e:
        raise UserError(f"{e}. Give train.backbone_init a trunk of this model's depth and width (detkd "
                        "pretrain-trunk OUT --depth D --width W) or train.backbone_init= to start from random init",
                        key="train.backbone_init", path=path) from e


def build_task(cfg: ExperimentConfig) -> nn.Module:
    """The trainable module for this config: a plain ``DetectionTask`` or a ``DistillTask``."""
    student = build_model(cfg.model)  # train.init_weights is loaded by the Trainer
    if cfg.train.backbone_init and hasattr(student, "roi_forward"):  # Faster R-CNN: torchvision / caffe trunks
        from detkd.models.rcnn_weights import load_backbone_init

        _trunk_init(load_backbone_init, student, cfg.train.backbone_init)
    elif cfg.train.backbone_init and hasattr(getattr(student, "backbone", None), "body"):  # RetinaNet / GFL
        from detkd.models.weights import load_resnet_trunk

        _trunk_init(load_resnet_trunk, student, cfg.train.backbone_init)
    elif cfg.train.backbone_init:
        from detkd.models.weights import load_backbone_imagenet

        load_backbone_imagenet(student, cfg.train.backbone_init, trust=cfg.train.trust_pickle)
    if cfg.distill is None:
        return DetectionTask(student)
    from detkd.distill.distiller import build_distill_task
    from detkd.models.weights import load_teacher

    d = cfg.distill
    if not d.teacher_weights:
        raise ValueError("distill.teacher_weights is empty: a distillation run needs a trained teacher")
    return build_distill_task(d, student, load_teacher(d.teacher, d.teacher_weights))


class SetupError(UserError):
    """A run that cannot start: the config, the data and the weights disagree (a one-line message)."""


def model_num_classes(model: nn.Module) -> int | None:
    k = getattr(model, "num_classes", None)
    if k is None:
        k = getattr(getattr(model, "config", None), "num_classes", None)
    return None if k is None else int(k)


def check_setup(cfg: ExperimentConfig, student: nn.Module, train_set) -> None:
    """Fail before the first step when the model's class count differs from the training data's, or when
    ``train.init_weights`` holds another architecture (missing / unexpected keys, other shapes)."""
    names = getattr(train_set, "class_names", None)
    k = model_num_classes(student)
    if names is not None and k is not None and len(names) != k:
        raise SetupError(f"data {cfg.data.name!r} ({getattr(cfg.data, 'root', '')}) has {len(names)} classes but "
                         f"model.num_classes={k} ({cfg.model.name}); set model.num_classes={len(names)}")
    if cfg.train.init_weights:
        from detkd.engine.checkpoint import load_student_weights
        from detkd.models.weights import check_state

        try:
            check_state(student, load_student_weights(cfg.train.init_weights),
                        f"train.init_weights={cfg.train.init_weights}")
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise SetupError(str(e).strip("'\"")) from None


def train(cfg: ExperimentConfig, resume: bool = False, evaluate: bool = True) -> dict:
    """Train (or distil) as the config says, evaluate, and write ``summary.json`` in the run directory."""
    import dataclasses

    from detkd.engine.loop import Trainer
    from detkd.engine.rundir import check_run_dir

    # fail before building anything (teacher, cache) when the run dir holds a run or the resumed config changed
    check_run_dir(cfg.run_dir, dataclasses.asdict(cfg), resume=resume or cfg.train.resume,
                  overwrite=cfg.train.overwrite, allow_changed=cfg.train.allow_changed)
    if cfg.task != "detection":
        from detkd.experiment_facerec import train_facerec

        return train_facerec(cfg, resume=resume)
    torch.manual_seed(cfg.train.seed)
    task = build_task(cfg)
    train_set = build_train_set(cfg)
    check_setup(cfg, task.student, train_set)
    collate = build_collate(cfg)
    if cfg.distill is not None:  # fail fast: taps, shapes, identical inputs, teacher better than chance
        sample = collate([train_set[i] for i in range(min(2, len(train_set)))])
        task.check_setup(sample, teacher_loaded=True, accuracy_batches=[sample])
    trainer = Trainer(cfg, task, train_set, evaluate=make_evaluator(cfg) if evaluate else None,
                      collate_fn=collate)
    return trainer.fit(resume=resume)
