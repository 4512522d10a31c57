"""RetinaNet: torchvision's ``retinanet_resnet50_fpn`` architecture exactly, filling ``DetOutput``.

Built from torchvision's parts (ResNet + ``BackboneWithFPN`` + ``LastLevelP6P7``, ``AnchorGenerator``, ``BoxCoder``,
``Matcher``, ``sigmoid_focal_loss``, ``batched_nms``) without their training-mode-dependent forwards: the head runs
per level (torchvision concatenates the levels), the assignment is kept, and the transform (resize, normalise, pad)
is split: the data pipeline resizes and pads, the model normalises (``detkd.infer_detector`` has torchvision's
geometry as the ``torchvision`` protocol).

Conventions:

* Input ``images`` float ``[B, 3, H, W]`` RGB 0..255; the model computes ``(x / 255 - mean) / std`` with ImageNet
  mean/std (non-persistent buffers: the state dict is torchvision's, key for key).
* ``feats``: ``p3..p7`` (``fpn_channels``, strides 8..128) and the tower outputs ``cls_feat.pX`` / ``reg_feat.pX``.
* ``head["cls_logits"]`` ``[B, HW*A, K]`` sigmoid (column ``c`` is label ``c + label_base``; torchvision's COCO
  models use ``label_base=0`` with 91 columns, own models ``label_base=1``), ``head["box_reg"]`` ``[B, HW*A, 4]``
  torchvision ``BoxCoder`` deltas (weights 1, 1, 1, 1). A = 9 anchors: sizes ``(s, int(s 2^(1/3)), int(s 2^(2/3)))``
  for s = 32..512, ratios 0.5/1/2, ratio-major as torchvision; location order row-major then anchor.
* ``priors`` xyxy pixels, from torchvision's ``AnchorGenerator`` with its stride rule ``padded size // grid size``
  (not always 64 / 128 on P6 / P7: e.g. 800 // 13 = 61).
* Built on ``detkd.models.dense.DenseDetector``; ``postprocess`` thresholds: ``score_thresh`` (0.05),
  ``nms_thresh`` (0.5), ``topk_candidates`` (1000 per level), ``max_dets`` (300), ``nms`` (``"greedy"``, or
  ``"cluster-diou-voting"``: a preset of ``detkd.ops.nms``).
* Assignment: IoU ``Matcher(0.5, 0.4, allow_low_quality_matches=True)``; ``neg`` below 0.4, ``ignore`` between.
* Losses as torchvision: ``task.cls`` = mean over images of focal loss (α 0.25, γ 2, summed over the non-ignored
  anchors) / max(1, n_pos of the image); ``task.box`` = mean over images of L1 on the deltas / max(1, n_pos).
* Decoding (``postprocess``): per level sigmoid scores > 0.05, top 1000, decode, clip to the image's valid size,
  class-wise NMS 0.5, 300 detections.
* Optional distribution branch (``dist_reg_max > 0``, default 0 = off, so the state dict, the importer and every
  output stay torchvision's): ``head.regression_head.bbox_dist``, a 3x3 conv on the regression tower's output,
  predicts ``4 * (dist_reg_max + 1)`` logits per anchor as ``head["box_dist"]`` (declared ``"distribution"``; edges
  l, t, r, b; bins 0..dist_reg_max in units of the level's nominal stride 8..128), the head key LD distils. It is
  trained with GFL's DFL on the positives: targets = the anchor-centre-to-matched-GT-edge distances / stride,
  clamped to ``[0, dist_reg_max - 0.1]``; ``task.dfl`` = ``dfl_weight`` (0.25, GFL's) x mean over images of
  ``Σ_pos DFL / 4 / max(1, n_pos)`` (RetinaNet's normalisation, not GFL's ω weighting). Decision: decoding keeps
  the deltas, so the detector's results (and its ONNX graph) stay RetinaNet's; the branch only shapes the shared
  regression tower and gives LD something to distil. ``assign`` also fills ``Assignment.thresholds`` with
  ``fg_iou`` per GT: the IoU above which this assigner calls an anchor positive, which LD's VLR uses where GFL
  uses its ATSS thresholds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import clip_boxes_to_image, sigmoid_focal_loss
from torchvision.ops.misc import Conv2dNormActivation

from detkd.models.dense import DenseDetector, flatten_level
from detkd.models.det_targets import gt_tensors
from detkd.models.resnet_fpn import LEVELS, STRIDES, freeze_stages, levels_of, resnet_fpn, set_norm_eval
from detkd.ops.assign import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, max_iou_match
from detkd.ops.gfl import bbox2distance, distribution_focal_loss
from detkd.ops.nms import get_nms
from detkd.registry import register
from detkd.structures import Assignment, DetOutput, HeadKey

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class RetinaNetConfig:
    name: str = "retinanet"
    depth: int = 50  # ResNet depth (18 / 34 / 50 / 101)
    num_classes: int = 91  # sigmoid columns (torchvision COCO: 91 with label_base 0)
    label_base: int = 1  # label id of column 0 (1 for own models, 0 for torchvision's 91-column models)
    fpn_channels: int = 256
    num_convs: int = 4  # convs per head tower
    anchor_base: tuple[int, ...] = (32, 64, 128, 256, 512)  # smallest anchor size per level P3..P7
    fg_iou: float = 0.5
    bg_iou: float = 0.4
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    frozen_stages: int = 0  # mmdet-style: 1 freezes conv1 + layer1 (torchvision weights=None: 0)
    norm_eval: bool = False  # keep every BatchNorm of the trunk in eval mode while training
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    topk_candidates: int = 1000
    detections_per_img: int = 300
    width: float = 1.0  # ResNet channel scale (CPU-sized light variants; 1.0 = torchvision's trunk)
    dist_reg_max: int = 0  # > 0 adds the box-distribution branch (head key "box_dist", bins 0..dist_reg_max; LD)
    dfl_weight: float = 0.25  # weight of the branch's DFL (GFL's)
    head_gn_groups: int = 0  # > 0: GroupNorm after every tower conv (torchvision's retinanet_resnet50_fpn_v2 head)


def default_anchor_generator(bases) -> AnchorGenerator:
    """torchvision's ``_default_anchorgen`` for any base sizes: 3 octave scales x 3 ratios per level."""
    sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in bases)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


class Tower(nn.Module):
    """torchvision's RetinaNet sub-head layout: ``conv`` (``n`` x conv3x3 + ReLU) then the predictor ``name``."""

    def __init__(self, channels: int, out: int, n: int, name: str, bias: float = 0.0, gn_groups: int = 0):
        super().__init__()
        norm = partial(nn.GroupNorm, gn_groups) if gn_groups else None  # torchvision's v2 head: GN, no conv bias
        self.conv = nn.Sequential(*[Conv2dNormActivation(channels, channels, norm_layer=norm) for _ in range(n)])
        setattr(self, name, nn.Conv2d(channels, out, 3, 1, 1))
        self.pred_name = name
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(getattr(self, name).bias, bias)

    def forward(self, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
        feat = self.conv(x)  # [B, C, h, w]
        y = getattr(self, self.pred_name)(feat)  # [B, A*k, h, w]
        n, _, h, w = y.shape
        y = y.view(n, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k)  # [B, h*w*A, k]
        return y, feat


class RetinaNetHead(nn.Module):
    """torchvision's head; ``dist_bins > 0`` adds ``regression_head.bbox_dist``, a 3x3 conv on the regression
    tower's output predicting ``4 * dist_bins`` distribution logits per anchor (init as the other predictors)."""

    def __init__(self, channels: int, num_anchors: int, num_classes: int, num_convs: int = 4, prior: float = 0.01,
                 dist_bins: int = 0, gn_groups: int = 0):
        super().__init__()
        self.classification_head = Tower(channels, num_anchors * num_classes, num_convs, "cls_logits",
                                         -math.log((1 - prior) / prior), gn_groups)
        self.regression_head = Tower(channels, num_anchors * 4, num_convs, "bbox_reg", gn_groups=gn_groups)
        if dist_bins:
            self.regression_head.bbox_dist = nn.Conv2d(channels, num_anchors * 4 * dist_bins, 3, 1, 1)
            nn.init.normal_(self.regression_head.bbox_dist.weight, std=0.01)
            nn.init.constant_(self.regression_head.bbox_dist.bias, 0.0)


class RetinaNet(DenseDetector):
    levels = LEVELS

    def __init__(self, cfg: RetinaNetConfig, backbone: nn.Module | None = None, head: nn.Module | None = None):
        super().__init__()
        self.config = cfg
        self.backbone = backbone if backbone is not None else resnet_fpn(cfg.depth, cfg.fpn_channels, "p6p7_relu", cfg.width)
        self.anchor_generator = default_anchor_generator(cfg.anchor_base)
        a = self.anchor_generator.num_anchors_per_location()[0]
        if cfg.dist_reg_max < 0:
            raise ValueError(f"retinanet: dist_reg_max={cfg.dist_reg_max}; use 0 (no distribution branch) or > 0")
        bins = cfg.dist_reg_max + 1 if cfg.dist_reg_max else 0
        self.head = head if head is not None else RetinaNetHead(cfg.fpn_channels, a, cfg.num_classes, cfg.num_convs,
                                                                dist_bins=bins, gn_groups=cfg.head_gn_groups)
        self.box_coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        freeze_stages(self.backbone.body, cfg.frozen_stages)
        self.channels = {lvl: cfg.fpn_channels for lvl in LEVELS}
        self.strides = dict(zip(LEVELS, STRIDES))
        for lvl in LEVELS:
            for tower in ("cls_feat", "reg_feat"):
                self.channels[f"{tower}.{lvl}"] = cfg.fpn_channels
                self.strides[f"{tower}.{lvl}"] = self.strides[lvl]
        self.head_spec = {
            "cls_logits": HeadKey("sigmoid", cfg.num_classes),
            "box_reg": HeadKey("deltas", 4, encoding="rcnn"),
        }
        if cfg.dist_reg_max:
            self.head_spec["box_dist"] = HeadKey("distribution", 4 * bins, encoding="ltrb", reg_max=cfg.dist_reg_max)
            self.loss_weights = {"dfl": cfg.dfl_weight}
        # how to get the head key LD needs (``detkd.distill.ld`` quotes it when "box_dist" is missing)
        self.distribution_hint = "set the RetinaNet config's dist_reg_max > 0 (e.g. 16) to add the box_dist branch"
        self.thresholds = {"score_thresh": cfg.score_thresh, "nms_thresh": cfg.nms_thresh,
                           "topk_candidates": cfg.topk_candidates, "max_dets": cfg.detections_per_img,
                           "nms": "greedy"}
        self._anchor_cache: dict[tuple, list[Tensor]] = {}

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.config.norm_eval:
            set_norm_eval(self.backbone.body)
        return self

    # ------------------------------------------------------------------------------------------ stages

    def preprocess(self, images: Tensor) -> Tensor:
        """torchvision's normalisation of ``images / 255`` (ImageNet mean / std)."""
        return (images / 255.0 - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        return levels_of(self.backbone(x))  # p3..p7: [B, C, h_l, w_l]

    def head_forward(self, feats: dict[str, Tensor]) -> tuple[dict[str, list[Tensor]], dict[str, Tensor]]:
        head, taps = {"cls_logits": [], "box_reg": []}, {}
        k = self.config.num_classes
        dist = getattr(self.head.regression_head, "bbox_dist", None) if self.config.dist_reg_max else None
        if dist is not None:
            head["box_dist"] = []
            n = 4 * (self.config.dist_reg_max + 1)
        for lvl in LEVELS:
            cls, taps[f"cls_feat.{lvl}"] = self.head.classification_head(feats[lvl], k)
            box, taps[f"reg_feat.{lvl}"] = self.head.regression_head(feats[lvl], 4)
            head["cls_logits"].append(cls)
            head["box_reg"].append(box)
            if dist is not None:  # same layout as the other predictors: [B, h*w*A, 4 * bins]
                head["box_dist"].append(flatten_level(dist(taps[f"reg_feat.{lvl}"]), n))
        return head, taps

    def make_priors(self, height: int, width: int, device: torch.device) -> list[Tensor]:
        """Anchors per level ``[h*w*A, 4]`` xyxy, exactly torchvision's for a padded batch of ``height x width``.

        Grid sizes are ``ceil(H / s)`` (the ResNet/FPN strides round up); torchvision's stride per level is
        ``padded size // grid size``.
        """
        key = (int(height), int(width), str(device))
        if key not in self._anchor_cache:
            grids = [[math.ceil(height / s), math.ceil(width / s)] for s in STRIDES]
            strides = [[torch.tensor(height // g[0], dtype=torch.int64, device=device),
                        torch.tensor(width // g[1], dtype=torch.int64, device=device)] for g in grids]
            gen = self.anchor_generator
            gen.set_cell_anchors(torch.float32, device)
            if len(self._anchor_cache) > 32:
                self._anchor_cache.clear()
            self._anchor_cache[key] = gen.grid_anchors(grids, strides)
        return self._anchor_cache[key]

    @torch.no_grad()
    def assign(self, out: DetOutput, targets: list[dict]) -> Assignment:
        """torchvision's ``Matcher(fg_iou, bg_iou, allow_low_quality_matches=True)`` per image."""
        cfg = self.config
        anchors = torch.cat(out.priors)  # [P, 4]
        codes, labels, iou, thresholds = [], [], [], []
        for i, t in enumerate(targets):
            boxes, gt_labels = gt_tensors(t, i, cfg.num_classes, cfg.label_base, anchors.device)
            m = max_iou_match(boxes, anchors, cfg.fg_iou, cfg.bg_iou, allow_low_quality=True)
            codes.append(m.matched)
            labels.append(torch.where(m.pos, gt_labels[m.matched.clamp(min=0)], 0) if boxes.numel()
                          else torch.zeros_like(m.matched))
            iou.append(m.iou)
            thresholds.append(torch.full((boxes.shape[0],), float(cfg.fg_iou), device=anchors.device))
        codes = torch.stack(codes)  # [B, P]: gt index, -1 below low, -2 between
        pos = codes >= 0
        return Assignment(labels=torch.stack(labels), matched=torch.where(pos, codes, -1), pos=pos,
                          neg=codes == BELOW_LOW_THRESHOLD, ignore=codes == BETWEEN_THRESHOLDS,
                          iou=torch.stack(iou), thresholds=thresholds)

    def loss(self, out: DetOutput, targets: list[dict]) -> dict[str, Tensor]:
        """torchvision's RetinaNet losses (unweighted): ``{"cls": focal, "box": L1}``, plus ``"dfl"`` with the
        distribution branch."""
        cfg, a = self.config, out.assign
        cls = out.cat_head("cls_logits")  # [B, P, K]
        reg = out.cat_head("box_reg")  # [B, P, 4]
        anchors = torch.cat(out.priors)  # [P, 4]
        dist = out.cat_head("box_dist") if "box_dist" in out.head else None  # [B, P, 4 * bins]
        if dist is not None:
            stride = torch.cat([torch.full((p.shape[0],), float(s), device=anchors.device)
                                for p, s in zip(out.priors, STRIDES)])[:, None]  # [P, 1]
            centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # [P, 2] pixels
        cls_losses, box_losses, dfl_losses = [], [], []
        # per-image views by unbind: its backward stacks the image gradients once, where indexing ``cls[i]``
        # would zero-fill a whole-batch gradient per image and tensor
        cls_b, reg_b = cls.unbind(0), reg.unbind(0)
        dist_b = dist.unbind(0) if dist is not None else None
        for i, t in enumerate(targets):
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=cls.device).reshape(-1, 4)
            pos = a.pos[i]
            n = max(1, int(pos.sum()))
            col = a.labels[i][pos] - cfg.label_base  # in range: checked by assign
            gt_cls = torch.zeros_like(cls_b[i])
            gt_cls[pos.nonzero().squeeze(1), col] = 1.0
            valid = ~a.ignore[i]
            cls_losses.append(sigmoid_focal_loss(cls_b[i][valid].float(), gt_cls[valid].float(), cfg.focal_alpha,
                                                 cfg.focal_gamma, reduction="sum") / n)
            target = self.box_coder.encode_single(boxes[a.matched[i][pos]], anchors[pos])
            box_losses.append(F.l1_loss(reg_b[i][pos].float(), target, reduction="sum") / n)
            if dist is not None:  # GFL's DFL on the positives, distances in units of the level stride
                s = stride[pos]
                d = bbox2distance(centres[pos] / s, boxes[a.matched[i][pos]] / s, cfg.dist_reg_max)  # [n_pos, 4]
                logits = dist_b[i][pos].float().reshape(-1, cfg.dist_reg_max + 1)  # [n_pos * 4, bins]
                dfl_losses.append(distribution_focal_loss(logits, d.reshape(-1)).sum() / 4 / n)
        b = max(1, len(targets))
        raw = {"cls": torch.stack(cls_losses).sum() / b, "box": torch.stack(box_losses).sum() / b}
        if dist is not None:
            raw["dfl"] = torch.stack(dfl_losses).sum() / b
        return raw

    def decode(self, out: DetOutput, score_thresh: float, nms_thresh: float, topk_candidates: int,
               max_dets: int, nms: str = "greedy") -> list[dict[str, Tensor]]:
        """torchvision's ``postprocess_detections`` per image: ``{"boxes" xyxy, "scores", "labels"}``.

        ``nms`` names a preset of ``detkd.ops.nms.NMS_PRESETS`` (``"greedy"`` = torchvision's class-wise
        ``batched_nms``, the default; ``"cluster-diou-voting"`` = LD's score-voting Cluster-DIoU-NMS)."""
        label_base = self.config.label_base
        suppress = get_nms(nms)
        dets = []
        for i, size in enumerate(out.image_sizes):
            boxes_all, scores_all, labels_all = [], [], []
            for logits, reg, anchors in zip(out.head["cls_logits"], out.head["box_reg"], out.priors):
                k = logits.shape[-1]
                scores = torch.sigmoid(logits[i].float()).flatten()  # [h*w*A*K] (float32 under autocast too)
                keep = scores > score_thresh
                scores = scores[keep]
                idx = torch.where(keep)[0]
                scores, top = scores.topk(det_utils._topk_min(idx, topk_candidates, 0))  # a graph op when traced (ONNX)
                idx = idx[top]
                anchor_idx = torch.div(idx, k, rounding_mode="floor")
                boxes = self.box_coder.decode_single(reg[i][anchor_idx].float(), anchors[anchor_idx])
                boxes_all.append(clip_boxes_to_image(boxes, size))
                scores_all.append(scores)
                labels_all.append(idx % k)
            boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
            boxes, scores, labels, _ = suppress(boxes, scores, labels, nms_thresh, max_dets)
            dets.append({"boxes": boxes, "scores": scores, "labels": labels + label_base})
        return dets


# -------------------------------------------------------------------------------------------- builders

@register("model", tiny={"depth": 18, "num_classes": 3, "fpn_channels": 16, "num_convs": 1})
def retinanet(*, depth: int = 50, num_classes: int = 91, label_base: int = 1, fpn_channels: int = 256,
              num_convs: int = 4, anchor_base=(32, 64, 128, 256, 512), fg_iou: float = 0.5, bg_iou: float = 0.4,
              focal_alpha: float = 0.25, focal_gamma: float = 2.0, frozen_stages: int = 0, norm_eval: bool = False,
              score_thresh: float = 0.05, nms_thresh: float = 0.5, topk_candidates: int = 1000,
              detections_per_img: int = 300, width: float = 1.0, dist_reg_max: int = 0,
              dfl_weight: float = 0.25, head_gn_groups: int = 0) -> RetinaNet:
    """RetinaNet ResNet-FPN (torchvision ``retinanet_resnet50_fpn`` layout at the defaults; random init);
    ``dist_reg_max > 0`` adds the box-distribution branch (see the module docstring); ``head_gn_groups > 0`` puts
    GroupNorm in the towers (the ``_v2`` head)."""
    return RetinaNet(RetinaNetConfig(
        "retinanet", depth, num_classes, label_base, fpn_channels, num_convs, tuple(anchor_base), fg_iou, bg_iou,
        focal_alpha, focal_gamma, frozen_stages, norm_eval, score_thresh, nms_thresh, topk_candidates,
        detections_per_img, width, dist_reg_max, dfl_weight, head_gn_groups))
