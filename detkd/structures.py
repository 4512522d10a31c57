"""The model output contract every distillation method reads.

Conventions (all detectors):

* Images reach a model as ``float32 [B, 3, H, W]`` in **RGB, 0..255**, already resized/padded by the data
  pipeline. Each model converts to its own colour order and normalisation with its own buffers, so teacher
  and student always receive the identical tensor.
* A target is a dict per image:
    ``boxes``           float32 [N, 4]   x1, y1, x2, y2 in input pixels
    ``labels``          int64   [N]      class ids starting at 1 (face detection: 1 = face)
    ``landmarks``       float32 [N, 5, 2] (face detection, optional) in input pixels
    ``landmarks_valid`` bool    [N]      (face detection, optional) False for faces without landmarks
* Priors of dense detectors (and RPN anchors of two-stage ones) are reported per level as ``[HW*A, 4]``
  tensors, **xyxy in input pixels for every model** (``PRIOR_FORMAT``). Inside a level the order is row-major
  (y, x), then anchor, which matches ``feature.flatten(2)`` over H*W with A consecutive anchors per location.
  Anchor-free models (GFL/FCOS points) report one square prior per location.
* ``image_sizes``: the valid (h, w) of each image inside the padded batch (keep-ratio resize + pad), carried
  from the data pipeline to the model, masks, decoding and evaluation.
* Each detector declares ``model.head_spec: dict[str, HeadKey]``: what every ``head`` key means, so that
  losses choose softmax or sigmoid from the declaration and fail at build time on a mismatch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


PRIOR_FORMAT = "xyxy"  # every model's DetOutput.priors; consumers may assert it

# Kinds of dense head outputs (HeadKey.kind).
HEAD_KINDS = (
    "softmax",       # classification with a background column 0: [.., K+1]; p = softmax(z)
    "sigmoid",       # K independent sigmoid columns (no background column): [.., K]; p = sigmoid(z)
    "deltas",        # box deltas w.r.t. the prior (encoding named in HeadKey.encoding)
    "distances",     # l, t, r, b distances from the prior centre in units of stride (anchor-free)
    "distribution",  # 4 * (reg_max + 1) logits: a discrete distribution per box edge (GFL/LD)
    "landmarks",     # 2 * n_points landmark offsets w.r.t. the prior
    "objectness",    # RPN objectness, one sigmoid logit per anchor
)


@dataclass(frozen=True)
class HeadKey:
    """The declared meaning of one ``DetOutput.head`` key.

    ``kind``      one of ``HEAD_KINDS``
    ``dim``       last-axis size of the tensors (``K+1`` for softmax, ``K`` for sigmoid, ``4``, ``4*(reg_max+1)``)
    ``encoding``  for boxes: ``"ssd"`` (cx, cy, w, h deltas with variances), ``"rcnn"`` (torchvision BoxCoder),
                  ``"ltrb"`` (distances); free text elsewhere
    ``reg_max``   for ``"distribution"``: bins are 0..reg_max
    """

    kind: str
    dim: int
    encoding: str = ""
    reg_max: int | None = None

    def __post_init__(self):
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; known: {', '.join(HEAD_KINDS)}")

    @property
    def num_classes(self) -> int:
        """Foreground classes of a classification key (softmax: dim - 1, sigmoid: dim)."""
        if self.kind == "softmax":
            return self.dim - 1
        if self.kind == "sigmoid":
            return self.dim
        raise ValueError(f"head key of kind {self.kind!r} has no classes")


@dataclass
class Assignment:
    """Anchor/prior assignment of a dense detector, batched over images (one row per image).

    ``labels``    int64 [B, P]  class id of the matched GT (>0), 0 for background; for RetinaFace the
                                 value -1 marks a positive matched to a face without landmarks
    ``matched``   int64 [B, P]  index of the matched GT inside the image's target (-1 where none)
    ``pos``       bool  [B, P]  positives (enter box regression and classification)
    ``neg``       bool  [B, P]  negatives selected for the classification loss (after hard-negative mining)
    ``ignore``    bool  [B, P]  priors that enter no loss
    ``iou``       float [B, P]  IoU of each prior with its best GT (0 where there is no GT)
    ``neg_rank``  int64 [B, P]  rank of each prior in the image's hard-negative ranking (0 = hardest
                                 negative; positives rank last). ``neg_rank < k`` selects the top-k hard
                                 negatives of the same ranking the detection loss used.
    """

    labels: Tensor
    matched: Tensor
    pos: Tensor
    neg: Tensor
    ignore: Tensor
    iou: Tensor
    neg_rank: Tensor | None = None
    weights: Tensor | None = None  # float [B, P] per-prior weights (LD's VLR IoU weights, soft targets)
    thresholds: list[Tensor] | None = None  # per image [G] per-GT IoU thresholds (ATSS mean + std)

    @property
    def num_pos(self) -> Tensor:  # [B]
        return self.pos.sum(1)


@dataclass
class RoIOutput:
    """The second stage of a two-stage detector, for the RoIs it sampled (training) or was given.

    ``proposals``  per image ``[n_i, 4]`` xyxy: the RPN's proposals after NMS (before sampling)
    ``rois``       per image ``[r_i, 4]`` xyxy: the RoIs the box head ran on (sampled when targets are given)
    ``labels``     int64 ``[R]`` class of each RoI (0 = background), ``R = sum r_i``; ``None`` without targets
    ``matched``    int64 ``[R]`` index of the matched GT inside its image (-1 for background); ``None`` without targets
    ``feats``      ``[R, C, S, S]`` pooled features (RoIAlign / RoIPool)
    ``hidden``     ``[R, D]`` the box head's output before the predictors (fc7 / two-fc)
    ``cls_logits`` ``[R, K+1]`` softmax with background column 0
    ``box_reg``    ``[R, 4*(K+1)]`` class-specific (or ``[R, 4]`` class-agnostic) rcnn deltas
    """

    proposals: list[Tensor]
    rois: list[Tensor]
    feats: Tensor
    hidden: Tensor
    cls_logits: Tensor
    box_reg: Tensor
    labels: Tensor | None = None
    matched: Tensor | None = None

    @property
    def batch_index(self) -> Tensor:
        """int64 ``[R]``: the image each RoI belongs to."""
        sizes = torch.tensor([r.shape[0] for r in self.rois], device=self.cls_logits.device)
        return torch.repeat_interleave(torch.arange(len(self.rois), device=sizes.device), sizes)


@dataclass
class DetOutput:
    """What every detector's ``forward(images, targets=None, decode=False, image_sizes=None)`` returns, in any mode.

    ``feats``   named feature maps ``[B, C, H, W]``: neck outputs ``"p3"``, ``"p4"``, ... and head-tower
                outputs ``"cls_feat.p3"``, ``"reg_feat.p3"`` where the model has task towers
    ``head``    raw dense outputs per level, e.g. ``"cls_logits"`` ``[B, HW*A, K]``, ``"box_reg"``
                ``[B, HW*A, 4]``, ``"landmarks"`` ``[B, HW*A, 10]``
    ``priors``  per level ``[HW*A, 4]`` in input pixels (format documented by the model)
    ``assign``  present iff targets were given
    ``losses``  task losses (``"task.loc"``, ``"task.cls"``, ...), present iff targets were given; already
                weighted, so the training objective is their sum
    ``dets``    per image ``{"boxes" [N,4] xyxy, "scores" [N], "labels" [N], "landmarks" [N,5,2]?}`` iff
                ``decode=True``
    ``raw_losses`` the unweighted task terms the loss computed (e.g. RetinaFace ``"loc"``), iff targets
                were given; methods read them (TDKD's dynamic scale) and never recompute a loss
    ``rois``    two-stage models: the ``RoIOutput``; ``None`` for dense detectors
    ``image_sizes`` the valid ``(h, w)`` of each image inside the padded batch

    Nothing a method reads travels in an untyped dict.
    """

    feats: dict[str, Tensor] = field(default_factory=dict)
    head: dict[str, list[Tensor]] = field(default_factory=dict)
    priors: list[Tensor] = field(default_factory=list)
    assign: Assignment | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)
    dets: list[dict[str, Tensor]] | None = None
    raw_losses: dict[str, Tensor] = field(default_factory=dict)
    rois: RoIOutput | None = None
    image_sizes: list[tuple[int, int]] = field(default_factory=list)

    def level_sizes(self, key: str = "cls_logits") -> list[int]:
        """Number of priors per level, derived from the actual head outputs (any input size)."""
        return [t.shape[1] for t in self.head[key]]

    def cat_head(self, key: str) -> Tensor:
        """All levels of a head output concatenated along the prior axis: ``[B, P, k]``."""
        return torch.cat(self.head[key], dim=1)


@dataclass
class EmbedOutput:
    """What every face recognizer returns.

    ``embedding`` ``[B, D]`` raw (un-normalised) embedding; ``logits`` ``[B, K]`` iff a classification head
    was given labels; ``losses`` task losses iff labels were given; ``feats`` named intermediate maps.
    """

    embedding: Tensor
    logits: Tensor | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)
    feats: dict[str, Tensor] = field(default_factory=dict)
