"""Face-recognition objectives: ArcFace and the four distillation methods of MarginDistillation (METHODS.md §5).

They are registered as the kind ``"objective"`` (``detkd list objectives``), apart from the detection
distillation methods (``"method"``); the recipe that trains them is ``detkd.experiment_facerec``.

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
from typing import Any, Literal

import torch
from torch import Tensor, nn

from detkd.distill import facerec_losses as L
from detkd.distill.triplet import mine_triplets
from detkd.registry import lookup, register

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


@register("objective")
def arcface(student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None, **_) -> FaceTask:
    return FaceTask(student, cfg)


@register("objective")
def angular(student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None, **_) -> FaceTask:
    return AngularTask(student, cfg)


@register("objective")
def triplet_l2(student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None, seed: int = 0, **_) -> FaceTask:
    return TripletTask(student, cfg, "l2", seed)


@register("objective")
def triplet_cos(student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None, seed: int = 0, **_) -> FaceTask:
    return TripletTask(student, cfg, "cos", seed)


@register("objective")
def margin_t(student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None, **_) -> FaceTask:
    return MarginTTask(student, cfg, centres)


@register("objective")
def margin_distillation(student: nn.Module, cfg: FaceKDConfig, centres: Tensor | None = None, **_) -> FaceTask:
    return MarginDistillationTask(student, cfg, centres)


def build_face_task(student: nn.Module, cfg: FaceKDConfig | None, centres: Tensor | None = None,
                    seed: int = 0) -> FaceTask:
    """The task of ``cfg.method`` around ``student`` (``cfg=None``: plain ArcFace)."""
    cfg = cfg or FaceKDConfig()
    try:
        builder = lookup("objective", cfg.method)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    return builder(student, cfg, centres, seed=seed)
