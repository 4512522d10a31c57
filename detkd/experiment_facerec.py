"""The face-recognition recipe: from an ``ExperimentConfig`` with ``task="facerec"`` to a finished run.

The recipe layer beside ``detkd/experiment.py`` (which dispatches here): identity-folder data
(``FaceDataConfig``), the teacher cache, the objective (``detkd.distill.facerec_objectives``, registry kind
``"objective"``), verification during training, and the engine's ``Trainer``. The CPU-sized and paper-sized
presets that the configs call live in ``configs/facerec/_facerec_presets.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkd.distill.facerec_objectives import NEEDS_CENTRES, NEEDS_TEACHER, FaceKDConfig, FaceTask, build_face_task
from detkd.models.weights import load_teacher
from detkd.registry import build_model


@dataclass
class FaceDataConfig:
    """Identity-folder training data and a verification ``.bin`` (DATA layout of ``detkd.data.facerec``)."""

    root: str = "data/synthids/train"
    img_size: int = 112
    val_bin: str = ""  # "" = no verification during training
    val_batch_size: int = 64
    synthids: bool = False  # write SynthIDs into root's parent first (idempotent; detkd.data.synthids)
    synthids_seed: int = 0



@dataclass
class FaceRun:
    """Everything ``Trainer`` needs for one face-recognition experiment (see :func:`build_facerec`)."""

    task: FaceTask
    train_set: Any
    collate_fn: Any = None
    evaluate: Any = None
    cache: Any = None  # the TeacherCache, when the method uses a teacher


def verification_eval(bin_path: str, batch_size: int = 64):
    """``evaluate(student, epoch) -> {"acc", "acc_std", "tar_far_1e-2", "tar_far_1e-3"}`` on a ``.bin``."""
    from detkd.eval.verification import verify_bin

    def evaluate(student: nn.Module, epoch: int) -> dict:
        out = verify_bin(student, bin_path, batch_size=batch_size)
        keys = ("acc", "acc_std") + tuple(f"{t}{x}" for t in ("tar_far_1e-2", "tar_far_1e-3")
                                          for x in ("", "_far", "_reached"))  # _reached: see verification.py
        return {k: bool(out[k]) if k.endswith("_reached") else float(out[k]) for k in keys if k in out}

    return evaluate


def build_facerec(cfg: Any, student: nn.Module | None = None) -> FaceRun:
    """Data, teacher cache and task of an ``ExperimentConfig`` with ``task="facerec"``.

    ``cfg.data`` is a :class:`FaceDataConfig`, ``cfg.model`` the student's ``FaceModelConfig`` (its
    ``num_classes`` must equal the number of identity folders), ``cfg.distill`` a :class:`FaceKDConfig` or
    None (plain ArcFace). A teacher method builds or reuses the cache (the teacher is loaded only to build it).
    Triplet methods batch whole identities: ``train.batch_size`` must equal ``bag_size // imgs_per_id``.
    """
    from detkd.data.facerec import FaceFolder
    from detkd.distill.cache import CachedFaceDataset, TeacherCache
    from detkd.distill.triplet import IdentityGroups, collate_groups

    data, kd = cfg.data, cfg.distill or FaceKDConfig()
    if getattr(data, "synthids", False):
        from detkd.data.synthids import write_synthids

        write_synthids(Path(data.root).parent, seed=data.synthids_seed, img_size=data.img_size)
    folder = FaceFolder(data.root, img_size=data.img_size)
    if cfg.model.num_classes != folder.num_classes:
        raise ValueError(
            f"model.num_classes={cfg.model.num_classes} but {data.root} holds {folder.num_classes} identities"
        )
    if student is None:
        torch.manual_seed(cfg.train.seed)  # the initialisation is a function of the run's seed
        student = build_model(cfg.model)
    train_set, cache = folder, None
    if kd.method in NEEDS_TEACHER:
        cache_path = kd.cache_path or str(Path(cfg.train.out_dir) / cfg.name / "teacher_cache.pt")
        cache = TeacherCache.build_or_load(
            cache_path, teacher_weights=kd.teacher_weights, dataset=folder,
            make_teacher=lambda: load_teacher(kd.teacher, kd.teacher_weights), img_size=data.img_size,
            need_centres=kd.method in NEEDS_CENTRES, batch_size=kd.cache_batch_size,
        )
        train_set = CachedFaceDataset(folder, cache)
    collate = None
    if kd.method.startswith("triplet"):
        ids_per_bag = max(2, kd.bag_size // kd.imgs_per_id)
        if cfg.train.batch_size != ids_per_bag:
            raise ValueError(
                f"{kd.method}: train.batch_size counts identities per bag and must be bag_size // imgs_per_id "
                f"= {kd.bag_size} // {kd.imgs_per_id} = {ids_per_bag}, got {cfg.train.batch_size}"
            )
        train_set = IdentityGroups(train_set, folder.labels, kd.imgs_per_id, seed=cfg.train.seed)
        collate = collate_groups
    centres = cache.centres if cache is not None else None
    task = build_face_task(student, kd, centres, seed=cfg.train.seed)
    evaluate = verification_eval(data.val_bin, data.val_batch_size) if data.val_bin else None
    return FaceRun(task, train_set, collate, evaluate, cache)


def train_facerec(cfg: Any, student: nn.Module | None = None, resume: bool | None = None) -> dict:
    """Build with :func:`build_facerec` and run the engine's ``Trainer``; returns its summary."""
    from detkd.engine.loop import Trainer

    run = build_facerec(cfg, student)
    return Trainer(cfg, run.task, run.train_set, evaluate=run.evaluate, collate_fn=run.collate_fn).fit(resume)
