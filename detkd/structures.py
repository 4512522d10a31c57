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
* Priors of dense detectors are reported per level as ``[HW*A, 4]`` tensors in input pixels; each model
  documents the box format (RetinaFace: cx, cy, w, h). Inside a level the order is row-major (y, x), then
  anchor, which matches ``feature.flatten(2)`` over H*W with A consecutive anchors per location.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


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

    @property
    def num_pos(self) -> Tensor:  # [B]
        return self.pos.sum(1)


@dataclass
class DetOutput:
    """What every detector's ``forward(images, targets=None, decode=False)`` returns, in any mode.

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
    ``extra``   anything else a family needs to expose (two-stage: proposals, RoI logits, ...)
    """

    feats: dict[str, Tensor] = field(default_factory=dict)
    head: dict[str, list[Tensor]] = field(default_factory=dict)
    priors: list[Tensor] = field(default_factory=list)
    assign: Assignment | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)
    dets: list[dict[str, Tensor]] | None = None
    extra: dict = field(default_factory=dict)

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
