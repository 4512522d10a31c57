"""Second stage of the Faster R-CNN family: RoI sampling, pooling, box head, predictor, loss, decoding.

Built from torchvision's ``Matcher``, ``BalancedPositiveNegativeSampler``, ``BoxCoder`` (weights 10, 10, 5,
5), ``MultiScaleRoIAlign`` / ``roi_align`` / ``roi_pool``, ``TwoMLPHead`` and ``FastRCNNPredictor``, without
``RoIHeads.forward`` (which returns losses or detections depending on ``.training`` and hides the sampled
RoIs).

* ``sample(proposals, targets)``: GT boxes appended to each image's proposals, ``Matcher(fg, bg)`` (RoIs
  below ``bg_iou`` are background, between the thresholds ignored), ``batch_per_image`` RoIs with at most
  ``positive_fraction`` positives; returns the sampled RoIs, labels ``[R]``, matched GT ``[R]`` (-1 for
  background) and box targets ``[R, 4]``.
* ``run(feats, rois, image_sizes)`` -> pooled ``[R, C, S, S]``, ``hidden [R, D]``, ``cls_logits [R, K+1]``
  (column 0 = background), ``box_reg [R, 4*(K+1)]`` class-specific (``[R, 4]`` class-agnostic).
* ``loss``: cross-entropy over the sampled RoIs; smooth-L1 (``beta``; 0 = L1) of the GT class's deltas over
  positives, divided by the number of sampled RoIs (torchvision's ``fastrcnn_loss``).
* ``postprocess``: softmax, class-specific decode, clip, drop background, score > ``score_thresh``, drop
  boxes under 0.01 px, per-class NMS, keep ``detections_per_img`` (torchvision's ``postprocess_detections``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, box_iou, clip_boxes_to_image, remove_small_boxes
from torchvision.ops import roi_align, roi_pool

from detkd.ops.nms import get_nms


class SingleLevelPooler(nn.Module):
    """RoIAlign / RoIPool on one named map (C4 models); same call as ``MultiScaleRoIAlign``."""

    def __init__(self, name: str, output_size: int, stride: int, mode: str = "align", sampling_ratio: int = 0,
                 aligned: bool = False):
        super().__init__()
        if mode not in ("align", "pool"):
            raise ValueError(f"RoI pooling mode must be align or pool, got {mode!r}")
        self.name, self.size, self.scale = name, output_size, 1.0 / stride
        self.mode, self.sampling_ratio, self.aligned = mode, sampling_ratio, aligned

    def forward(self, feats: dict[str, Tensor], boxes: list[Tensor], image_sizes) -> Tensor:
        x = feats[self.name]
        if self.mode == "pool":
            return roi_pool(x, boxes, self.size, self.scale)
        return roi_align(x, boxes, self.size, self.scale, self.sampling_ratio, self.aligned)


class VGGBoxHead(nn.Module):
    """fc6 -> ReLU -> Dropout -> fc7 -> ReLU -> Dropout (VGG's classifier without its last layer)."""

    def __init__(self, in_features: int, hidden: int, dropout: float = 0.5):
        super().__init__()
        self.fc6 = nn.Linear(in_features, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        x = F.dropout(F.relu(self.fc6(x.flatten(1))), self.dropout, self.training)
        return F.dropout(F.relu(self.fc7(x)), self.dropout, self.training)


class RoIHeads(nn.Module):
    """Sampling + pooling + box head + predictor of the second stage (see the module docstring)."""

    def __init__(self, pooler: nn.Module, box_head: nn.Module, hidden: int, num_classes: int, *,
                 class_agnostic: bool = False, fg_iou: float = 0.5, bg_iou: float = 0.5,
                 batch_per_image: int = 512, positive_fraction: float = 0.25, box_beta: float = 1 / 9,
                 box_weights=(10.0, 10.0, 5.0, 5.0), score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_img: int = 100):
        super().__init__()
        self.box_roi_pool = pooler
        self.box_head = box_head
        self.box_predictor = FastRCNNPredictor(hidden, num_classes + 1)
        if class_agnostic:
            self.box_predictor.bbox_pred = nn.Linear(hidden, 4)
        self.num_classes, self.class_agnostic = num_classes, class_agnostic
        self.box_coder = BoxCoder(tuple(box_weights))
        self.matcher = Matcher(fg_iou, bg_iou, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_per_image, positive_fraction)
        self.box_beta = box_beta
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img

    @torch.no_grad()
    def sample(self, proposals: list[Tensor], targets: list[dict]):
        """``(rois per image, labels [R], matched [R], box targets [R, 4])`` for the sampled RoIs."""
        props, labels, matched = [], [], []
        for p, t in zip(proposals, targets):
            boxes, gl = t["boxes"], t["labels"]
            p = torch.cat([p, boxes])
            if boxes.numel() == 0:
                m = torch.full((p.shape[0],), Matcher.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=p.device)
            else:
                m = self.matcher(box_iou(boxes, p))  # [n]
            lab = torch.where(m >= 0, gl[m.clamp(min=0)] if gl.numel() else torch.zeros_like(m), torch.zeros_like(m))
            lab[m == Matcher.BETWEEN_THRESHOLDS] = -1
            props.append(p)
            labels.append(lab)
            matched.append(torch.where(m >= 0, m, torch.full_like(m, -1)))
        pos, neg = self.sampler(labels)
        rois, out_labels, out_matched, reg = [], [], [], []
        for p, lab, m, ps, ng, t in zip(props, labels, matched, pos, neg, targets):
            keep = torch.where(ps | ng)[0]
            rois.append(p[keep])
            out_labels.append(lab[keep].clamp(min=0))
            out_matched.append(m[keep])
            gt = t["boxes"][m[keep].clamp(min=0)] if t["boxes"].numel() else torch.zeros(keep.numel(), 4, device=p.device)
            reg.append(self.box_coder.encode_single(gt, p[keep]))
        return rois, torch.cat(out_labels), torch.cat(out_matched), torch.cat(reg)

    def run(self, feats: dict[str, Tensor], rois: list[Tensor], image_sizes) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(pooled [R, C, S, S], hidden [R, D], cls_logits [R, K+1], box_reg [R, 4(K+1)])``."""
        pooled = self.box_roi_pool(feats, rois, image_sizes)
        hidden = self.box_head(pooled)
        cls_logits, box_reg = self.box_predictor(hidden)
        return pooled, hidden, cls_logits, box_reg

    def loss(self, cls_logits: Tensor, box_reg: Tensor, labels: Tensor, reg_targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(roi_cls, roi_box)`` as torchvision's ``fastrcnn_loss`` (empty batches give 0, not NaN)."""
        n = max(labels.numel(), 1)
        cls = F.cross_entropy(cls_logits.float(), labels, reduction="sum") / n
        pos = torch.where(labels > 0)[0]
        deltas = box_reg.float().reshape(box_reg.shape[0], -1, 4)  # [R, K+1 or 1, 4]
        cols = torch.zeros_like(pos) if self.class_agnostic else labels[pos]
        box = F.smooth_l1_loss(deltas[pos, cols], reg_targets[pos], beta=self.box_beta, reduction="sum") / n
        return cls, box

    @torch.no_grad()
    def postprocess(self, cls_logits: Tensor, box_reg: Tensor, rois: list[Tensor], image_sizes,
                    score_thresh: float | None = None, nms_thresh: float | None = None,
                    detections_per_img: int | None = None, nms: str = "greedy") -> list[dict[str, Tensor]]:
        """Per image ``{"boxes" [N, 4], "scores" [N], "labels" [N]}`` in input pixels, best first.

        ``nms``: a preset of ``detkd.ops.nms`` (``"greedy"``, torchvision's class-wise ``batched_nms``, or
        ``"cluster-diou-voting"``), applied to the (box, class) pairs that pass the score and size filters."""
        suppress = get_nms(nms)
        score_thresh = self.score_thresh if score_thresh is None else score_thresh
        nms_thresh = self.nms_thresh if nms_thresh is None else nms_thresh
        keep_n = self.detections_per_img if detections_per_img is None else detections_per_img
        k1 = cls_logits.shape[-1]
        if box_reg.shape[-1] == 4:
            box_reg = box_reg.repeat(1, k1)
        boxes_all = self.box_coder.decode_single(box_reg.float(), torch.cat(rois)).reshape(-1, k1, 4)
        scores_all = F.softmax(cls_logits.float(), -1)
        dets = []
        if len(rois) == 1:  # no split: its sizes would be constants in a traced (ONNX) graph
            per_image = [(boxes_all, scores_all)]
        else:
            per_image = zip(boxes_all.split([len(r) for r in rois]), scores_all.split([len(r) for r in rois]))
        for (boxes, scores), hw in zip(per_image, image_sizes):
            boxes = clip_boxes_to_image(boxes, hw)
            labels = torch.arange(k1, device=boxes.device).view(1, -1).expand_as(scores)
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            boxes, scores, labels, _ = suppress(boxes, scores, labels, nms_thresh, keep_n)
            dets.append({"boxes": boxes, "scores": scores, "labels": labels})
        return dets


def fpn_pooler(levels: list[str], output_size: int = 7, sampling_ratio: int = 2) -> MultiScaleRoIAlign:
    return MultiScaleRoIAlign(levels, output_size, sampling_ratio)


def two_mlp_head(in_features: int, hidden: int) -> TwoMLPHead:
    return TwoMLPHead(in_features, hidden)
