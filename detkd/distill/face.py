"""Face-recognition objectives: ArcFace and the four distillation methods of MarginDistillation (METHODS.md §5).

Each objective is a *task* (engine contract, docs/contracts.md): an ``nn.Module`` whose ``forward(batch)``
returns already-weighted loss terms and whose ``student`` attribute is the exported recognizer. No teacher
network lives inside a task: teacher embeddings come with the batch from the cache
(:class:`detkd.distill.cache.CachedFaceDataset`) and the teacher's class centres are a frozen tensor.

Batches (``B`` images, ``D`` embedding size, ``K`` classes):

* ``arcface``                     ``(images [B,3,S,S], labels [B])`` (a third item is ignored)
* ``angular`` / ``margin_t`` / ``margin_distillation``
                                  ``(images, labels, teacher [B, D])`` raw teacher embeddings
* ``triplet_l2`` / ``triplet_cos`` a bag ``(images [N,3,S,S], labels [N], teacher [N, D])`` of whole identity
                                  groups (:class:`detkd.distill.triplet.IdentityGroups`); mined in the step

Loss keys: ``task.cls`` (margin softmax CE), ``kd.angular``, ``kd.margin_t`` (temperature KD, or the released
coarse-label CE with ``faithful_bug``), ``kd.triplet``. MarginDistillation's objective is a CE with per-sample
margins over the teacher's frozen centres, logged as ``kd.md``.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from detkd.distill import face_losses as L
from detkd.distill.triplet import mine_triplets
from detkd.registry import register

log = logging.getLogger(__name__)

FACE_METHODS = ("arcface", "angular", "triplet_l2", "triplet_cos", "margin_t", "margin_distillation")
NEEDS_TEACHER = {m for m in FACE_METHODS if m != "arcface"}
NEEDS_CENTRES = {"margin_t", "margin_distillation"}


@dataclass
class FaceKDConfig:
    """Face-recognition objective and its teacher (METHODS.md §5.5, §5.6 defaults)."""

    method: Literal["arcface", "angular", "triplet_l2", "triplet_cos", "margin_t", "margin_distillation"] = "arcface"
    s: float = 64.0
    m: float = 0.5  # ArcFace margin (arcface, angular, margin_t and the teacher logits of margin_t)
    m_min: float = 0.2  # MarginDistillation / triplet adaptive margins
    m_max: float = 0.5
    alpha: float = 1.0  # angular distillation weight
    T: float = 4.0  # margin_t temperature
    kd_alpha: float = 0.95  # margin_t KD weight (1 − kd_alpha on the CE)
    faithful_bug: bool = False  # margin_t: the released CE(z, y) + CE(z/T, ⌊y/T⌋) instead of the intended KD
    md_faithful: bool = False  # margin_distillation: no D guard / margin clamp (released behaviour)
    mining_alpha: float = 0.35  # semi-hard window of triplet mining (squared L2)
    imgs_per_id: int = 18
    bag_size: int = 7200  # images per mining bag (triplet); identities per batch = bag_size // imgs_per_id
    triplets_per_batch: int = 60
    teacher: Any = None  # the teacher's FaceModelConfig (with num_classes > 0 when centres are needed)
    teacher_weights: str = ""  # teacher export / checkpoint holding its ArcFace head (fc7) weight
    cache_path: str = ""  # teacher cache file; "" = <run_dir>/teacher_cache.pt
    cache_batch_size: int = 64


@dataclass
class FaceDataConfig:
    """Identity-folder training data and a verification ``.bin`` (DATA layout of ``detkd.data.face``)."""

    root: str = "data/synthids/train"
    img_size: int = 112
    val_bin: str = ""  # "" = no verification during training
    val_batch_size: int = 64
    synthids: bool = False  # write SynthIDs into root's parent first (idempotent; detkd.data.synth_ids)
    synthids_seed: int = 0


# ------------------------------------------------------------------------------------------------ tasks


class FaceTask(nn.Module):
    """Shared plumbing: the student, the objective config and (optionally) frozen teacher centres."""

    method = "arcface"

    def __init__(self, student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None):
        super().__init__()
        if getattr(student, "head", None) is None:
            raise ValueError(f"{self.method}: the student needs a classification head (num_classes > 0)")
        if float(student.head.s) != float(cfg.s):
            raise ValueError(f"{self.method}: the student head has s={student.head.s} but distill.s={cfg.s}; "
                             "set model.s and distill.s alike")
        self.student = student
        self.cfg = cfg
        if centres is not None:
            k, d = student.head.weight.shape
            if tuple(centres.shape) != (k, d):
                raise ValueError(
                    f"{self.method}: teacher centres have shape {tuple(centres.shape)} but the student head is "
                    f"[{k}, {d}]; teacher and student need the same num_classes and embedding_dim"
                )
            # frozen teacher tensor, not a parameter; not saved with the task (it lives in the cache)
            self.register_buffer("centres", centres.detach().float().clone(), persistent=False)

    @staticmethod
    def _teacher(batch, method: str) -> Tensor:
        if len(batch) < 3:
            raise ValueError(f"{method}: the batch has no teacher embeddings; wrap the data in CachedFaceDataset")
        return batch[2].float()

    def forward(self, batch) -> dict[str, Tensor]:
        images, labels = batch[0].float(), batch[1].long()
        out = self.student(images, labels, margin=self.cfg.m)
        return {"task.cls": out.losses["task.cls"]}


class AngularTask(FaceTask):
    """CE_ArcFace + α·mean(1 − cos(x_i, t_i)) (§5.5.2)."""

    method = "angular"

    def forward(self, batch) -> dict[str, Tensor]:
        images, labels, t = batch[0].float(), batch[1].long(), self._teacher(batch, self.method)
        out = self.student(images, labels, margin=self.cfg.m)
        return {"task.cls": out.losses["task.cls"], "kd.angular": self.cfg.alpha * L.angular_term(out.embedding, t)}


class MarginTTask(FaceTask):
    """"Margin-based with T" (§5.5.4): intended temperature KD of ArcFace logits, or the released bug."""

    method = "margin_t"

    def __init__(self, student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None):
        if centres is None and not cfg.faithful_bug:
            raise ValueError("margin_t: the intended KD needs the teacher's class centres (cache with centres)")
        super().__init__(student, cfg, centres)
        log.info("margin_t: %s", "released objective CE(z,y)+CE(z/T,floor(y/T))" if cfg.faithful_bug
                 else "intended KD (1-a)CE + a T^2 KL")

    def forward(self, batch) -> dict[str, Tensor]:
        c = self.cfg
        images, labels = batch[0].float(), batch[1].long()
        out = self.student(images, labels, margin=c.m)  # logits z: ArcFace, trainable W
        if c.faithful_bug:
            ce, coarse = L.margin_t_faithful(out.logits, labels, c.T)
            return {"task.cls": ce, "kd.margin_t": coarse}
        t = self._teacher(batch, self.method)
        with torch.no_grad():
            z_t = L.margin_logits(L.cosine_matrix(t, self.centres), labels, c.s, c.m)  # [B, K]
        ce, kd = L.margin_t_loss(out.logits, z_t, labels, c.T, c.kd_alpha)
        return {"task.cls": ce, "kd.margin_t": kd}


class MarginDistillationTask(FaceTask):
    """MarginDistillation (§5.5.5): teacher centres as the frozen classifier, per-sample margins."""

    method = "margin_distillation"

    def __init__(self, student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None):
        if centres is None:
            raise ValueError("margin_distillation needs the teacher's class centres (cache with centres)")
        super().__init__(student, cfg, centres)
        student.head.set_weight(self.centres, freeze=True)  # W := teacher fc7, excluded from the optimizer
        log.info("margin_distillation: %s margins", "faithful (unguarded)" if cfg.md_faithful else "guarded/clamped")

    def train(self, mode: bool = True):
        """Also re-pins the teacher centres: ``train.init_weights`` (loaded into the student after the task is
        built) may have replaced the head weight by another classifier."""
        super().train(mode)
        head = self.student.head
        if mode and not torch.equal(head.weight, self.centres.to(head.weight)):
            log.warning("margin_distillation: student head weight differs from the teacher centres; re-pinned")
            head.set_weight(self.centres, freeze=True)
        return self

    def margins(self, teacher: Tensor, labels: Tensor) -> Tensor:  # [B]
        d = L.teacher_centre_cosine(teacher, self.student.head.weight.detach(), labels)
        return L.md_margins(d, self.cfg.m_min, self.cfg.m_max, faithful=self.cfg.md_faithful)

    def forward(self, batch) -> dict[str, Tensor]:
        images, labels, t = batch[0].float(), batch[1].long(), self._teacher(batch, self.method)
        out = self.student(images, labels, margin=self.margins(t, labels))
        return {"kd.md": out.losses["task.cls"]}


class TripletTask(FaceTask):
    """Triplet distillation (§5.5.3): mine with the current student in eval mode, teacher-adaptive margins."""

    method = "triplet"

    def __init__(self, student: nn.Module, cfg: FaceKDConfig, kind: str, seed: int = 0):
        super().__init__(student, cfg)
        if kind not in ("l2", "cos"):
            raise ValueError(f"triplet kind must be 'l2' or 'cos', got {kind!r}")
        self.kind = kind
        self.method = f"triplet_{kind}"
        self._gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def mine(self, images: Tensor, labels: Tensor) -> Tensor:
        """Triplet index rows ``[T, 3]`` into the bag, shuffled, at most ``triplets_per_batch``."""
        was_training = self.student.training
        self.student.eval()
        try:
            emb = nn.functional.normalize(self.student(images).embedding.float(), dim=1)  # [N, D]
        finally:
            self.student.train(was_training)
        trip = mine_triplets(emb.cpu(), labels.cpu(), self.cfg.mining_alpha, self._gen)
        trip = trip[torch.randperm(len(trip), generator=self._gen)]
        return trip[: self.cfg.triplets_per_batch].to(images.device)

    def forward(self, batch) -> dict[str, Tensor]:
        images, labels, t = batch[0].float(), batch[1].long(), self._teacher(batch, self.method)
        trip = self.mine(images, labels)
        if len(trip) == 0:
            warnings.warn(f"{self.method}: no semi-hard triplet in this bag; step contributes zero loss", stacklevel=2)
            zero = sum(p.sum() for p in self.student.parameters() if p.requires_grad) * 0.0
            return {"kd.triplet": zero}
        order = trip.t().reshape(-1)  # [3T]: anchors, positives, negatives (the reference batch layout)
        emb = self.student(images[order]).embedding  # [3T, D]
        sa, sp, sn = emb.chunk(3)
        ta, tp, tn = t[order].chunk(3)
        delta = L.teacher_triplet_delta(ta, tp, tn, self.kind)
        margin = L.triplet_margins(delta, self.cfg.m_min, self.cfg.m_max)
        return {"kd.triplet": L.triplet_loss(sa, sp, sn, margin, self.kind)}


# --------------------------------------------------------------------------------------------- builders


@register("method")
def arcface(student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None, **_) -> FaceTask:
    return FaceTask(student, cfg)


@register("method")
def angular(student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None, **_) -> FaceTask:
    return AngularTask(student, cfg)


@register("method")
def triplet_l2(student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None, seed: int = 0, **_) -> FaceTask:
    return TripletTask(student, cfg, "l2", seed)


@register("method")
def triplet_cos(student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None, seed: int = 0, **_) -> FaceTask:
    return TripletTask(student, cfg, "cos", seed)


@register("method")
def margin_t(student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None, **_) -> FaceTask:
    return MarginTTask(student, cfg, centres)


@register("method")
def margin_distillation(student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None, **_) -> FaceTask:
    return MarginDistillationTask(student, cfg, centres)


_BUILDERS = {
    "arcface": arcface, "angular": angular, "triplet_l2": triplet_l2, "triplet_cos": triplet_cos,
    "margin_t": margin_t, "margin_distillation": margin_distillation,
}


def build_face_task(student: nn.Module, cfg: FaceKDConfig | None, centres: Tensor | None = None,
                    seed: int = 0) -> FaceTask:
    """The task of ``cfg.method`` around ``student`` (``cfg=None``: plain ArcFace)."""
    cfg = cfg or FaceKDConfig()
    if cfg.method not in _BUILDERS:
        raise ValueError(f"unknown face method {cfg.method!r}; choose one of {list(FACE_METHODS)}")
    return _BUILDERS[cfg.method](student, cfg, centres, seed=seed)


# ------------------------------------------------------------------------------------------- a full run


@dataclass
class FaceRun:
    """Everything ``Trainer`` needs for one face-recognition experiment (see :func:`build_facerec`)."""

    task: FaceTask
    train_set: Any
    collate_fn: Any = None
    evaluate: Any = None
    cache: Any = None  # the TeacherCache, when the method uses a teacher


def load_face_teacher(model_cfg: Any, weights: str) -> nn.Module:
    """Build the teacher from its model config and load its weights (export, checkpoint or state dict);
    frozen and in eval mode."""
    from detkd.engine.checkpoint import load_student_weights
    from detkd.registry import build_model

    if model_cfg is None or not weights:
        raise ValueError("the distillation config needs `teacher` (a FaceModelConfig) and `teacher_weights`")
    teacher = build_model(model_cfg)
    try:
        teacher.load_state_dict(load_student_weights(weights), strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"teacher_weights={weights!r} do not match the teacher config {model_cfg}: {e}") from None
    return teacher.eval().requires_grad_(False)


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
    from detkd.data.face import FaceFolder
    from detkd.distill.cache import CachedFaceDataset, TeacherCache
    from detkd.distill.triplet import IdentityGroups, collate_groups
    from detkd.registry import build_model

    data, kd = cfg.data, cfg.distill or FaceKDConfig()
    if getattr(data, "synthids", False):
        from detkd.data.synth_ids import write_synthids

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
            make_teacher=lambda: load_face_teacher(kd.teacher, kd.teacher_weights), img_size=data.img_size,
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


# ---------------------------------------------------------------------------------------------- recipes
# The configs under configs/facerec/ call these two functions, so that the CPU-sized and the paper-sized
# recipes are written once and each config file states only what differs.

SYNTHIDS_TEACHER = dict(name="iresnet18", width=0.5)  # CPU-sized teacher: ~3.1M parameters at 48 px
SYNTHIDS_STUDENT = dict(name="mobilefacenet", width=0.5)  # CPU-sized student: ~0.5M parameters


def synthids_experiment(method: str, *, teacher: bool = False, img_size: int = 48, epochs: int = 8,
                        lr: float = 0.1, root: str = "data/synthids48", out_dir: str = "runs/facerec",
                        **distill) -> Any:
    """A CPU-sized SynthIDs experiment (64 training identities × 24 images, 600 verification pairs).

    ``teacher=True`` gives the ArcFace teacher run; otherwise the MobileFaceNet student trained by ``method``
    with the teacher of ``teacher=True`` (its ``final.pt``) and a cache shared by every method.
    """
    from detkd.config import ExperimentConfig, OptimConfig, ScheduleConfig, TrainConfig
    from detkd.models.face import FaceModelConfig

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
                          teacher_weights=f"{out_dir}/{teacher_name}/final.pt",
                          cache_path=f"{out_dir}/teacher_cache_synthids.pt", **distill)
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
            init_weights=f"{out_dir}/arcface_mobilefacenet_synthids/final.pt" if triplet else "",
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
    from detkd.config import ExperimentConfig, OptimConfig, ScheduleConfig, TrainConfig
    from detkd.models.face import FaceModelConfig

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
                          teacher_weights=f"{out_dir}/teacher_iresnet100_ms1m/final.pt",
                          cache_path=f"{out_dir}/teacher_cache_ms1m.pt", **distill)
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
            init_weights=f"{out_dir}/arcface_mobilefacenet_ms1m/final.pt" if triplet else "",
        ),
        distill=kd,
    )
