"""Face-recognition presets: the configs in this folder call these two functions, so that the CPU-sized
(SynthIDs) and the paper-sized (MS1M) recipes are written once and each config file states only what differs.

Not a config itself (the leading underscore keeps it out of ``detkd list configs``); ``load_config`` puts this
folder on the import path while it loads a config, so a config imports it as ``_facerec_presets``.
"""
from __future__ import annotations

from typing import Any

from detkd.config import OUT_DIR, ExperimentConfig, OptimConfig, ScheduleConfig, TrainConfig
from detkd.distill.facerec_objectives import FaceKDConfig
from detkd.experiment_facerec import FaceDataConfig
from detkd.models.facerec import FaceModelConfig

SYNTHIDS_TEACHER = dict(name="iresnet18", width=0.5)  # CPU-sized teacher: ~3.1M parameters at 48 px
SYNTHIDS_STUDENT = dict(name="mobilefacenet", width=0.5)  # CPU-sized student: ~0.5M parameters


def synthids_experiment(method: str, *, teacher: bool = False, img_size: int = 48, epochs: int = 8,
                        lr: float = 0.1, root: str = "data/synthids48", out_dir: str = "runs/facerec",
                        **distill) -> Any:
    """A CPU-sized SynthIDs experiment (64 training identities × 24 images, 600 verification pairs).

    ``teacher=True`` gives the ArcFace teacher run; otherwise the MobileFaceNet student trained by ``method``
    with the teacher of ``teacher=True`` (its ``final.pt``) and a cache shared by every method.
    """
    num_classes = 64
    teacher_cfg = FaceModelConfig(**SYNTHIDS_TEACHER, embedding_dim=512, num_classes=num_classes,
                                  input_size=img_size)
    teacher_name = f"teacher_{SYNTHIDS_TEACHER['name']}_synthids"
    name = teacher_name if teacher else f"{method}_mobilefacenet_synthids"
    model = teacher_cfg if teacher else FaceModelConfig(**SYNTHIDS_STUDENT, embedding_dim=512,
                                                        num_classes=num_classes, input_size=img_size)
    triplet = method.startswith("triplet") and not teacher
    kd = None
    if not teacher:
        if triplet:  # small bags: 16 identities × 8 images, 20 triplets (60 images) per step
            distill = dict(dict(imgs_per_id=8, bag_size=128, triplets_per_batch=20), **distill)
        kd = FaceKDConfig(method=method, teacher=teacher_cfg,
                          teacher_weights=f"{OUT_DIR}/{teacher_name}/final.pt",
                          cache_path=f"{OUT_DIR}/teacher_cache_synthids.pt", **distill)
    sched = ScheduleConfig(name="step", warmup_iters=20, milestones=[0.6 * epochs, 0.85 * epochs], gamma=0.1)
    if triplet:  # fine-tune of the ArcFace student at a constant small lr (§5.6)
        sched = ScheduleConfig(name="constant")
    return ExperimentConfig(
        name=name,
        task="facerec",
        model=model,
        data=FaceDataConfig(root=f"{root}/train", img_size=img_size, val_bin=f"{root}/val.bin", synthids=True),
        optim=OptimConfig(name="sgd", lr=lr, momentum=0.9, weight_decay=5e-4),
        sched=sched,
        train=TrainConfig(
            epochs=epochs, batch_size=(kd.bag_size // kd.imgs_per_id) if triplet else 64, out_dir=out_dir,
            amp=False, log_every=10,
            init_weights=f"{OUT_DIR}/arcface_mobilefacenet_synthids/final.pt" if triplet else "",
        ),
        distill=kd,
    )


def ms1m_experiment(method: str, *, teacher: bool = False, root: str = "data/faces_emore",
                    out_dir: str = "runs/facerec", **distill) -> Any:
    """The paper recipe (METHODS.md §5.6): MS1M-ArcFace, 85,742 identities, 112 px, batch 256 per device,
    SGD 0.1 (triplet 1e-3) ×0.1 at iterations 100k/160k/220k, s 64, m 0.5, R100 teacher (PReLU, dropout 0.4).

    The reference has no max_steps; with 5.8M images at batch 256 one epoch is ~22.7k iterations, so
    ``epochs=12`` (~272k iterations) passes all three decays. Milestones are given in epochs (fractions).
    """
    num_classes, iters_per_epoch = 85_742, 5_822_653 / 256
    teacher_cfg = FaceModelConfig(name="iresnet100", embedding_dim=512, num_classes=num_classes, input_size=112,
                                  dropout=0.4)
    name = "teacher_iresnet100_ms1m" if teacher else f"{method}_mobilefacenet_ms1m"
    model = teacher_cfg if teacher else FaceModelConfig(name="mobilefacenet", embedding_dim=512,
                                                        num_classes=num_classes, input_size=112, activation="relu")
    triplet = method.startswith("triplet")
    kd = None
    if not teacher:
        kd = FaceKDConfig(method=method, teacher=teacher_cfg,
                          teacher_weights=f"{OUT_DIR}/teacher_iresnet100_ms1m/final.pt",
                          cache_path=f"{OUT_DIR}/teacher_cache_ms1m.pt", **distill)
    milestones = [round(it / iters_per_epoch, 4) for it in (100_000, 160_000, 220_000)]
    return ExperimentConfig(
        name=name,
        task="facerec",
        model=model,
        data=FaceDataConfig(root=f"{root}/train", img_size=112, val_bin=f"{root}/agedb_30.bin", val_batch_size=256),
        optim=OptimConfig(name="sgd", lr=1e-3 if triplet else 0.1, momentum=0.9, weight_decay=5e-4),
        sched=ScheduleConfig(name="constant" if triplet else "step", milestones=[] if triplet else milestones),
        train=TrainConfig(
            epochs=12, batch_size=(kd.bag_size // kd.imgs_per_id) if triplet else 256, num_workers=8,
            out_dir=out_dir, log_every=100, eval_every=1,
            init_weights=f"{OUT_DIR}/arcface_mobilefacenet_ms1m/final.pt" if triplet else "",
        ),
        distill=kd,
    )
