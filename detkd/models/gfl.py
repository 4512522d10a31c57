"""GFL (Generalized Focal Loss V1): mmdet v2's ``GFLHead`` as LD uses it (METHODS.md §3.2), filling ``DetOutput``.

Architecture (every number of §3.2):

* ResNet (torchvision trunk; mmdet's ResNet has the same keys) with ``frozen_stages=1`` and ``norm_eval=True``;
  FPN on C3-C5, ``fpn_channels`` (256), extra convs on the P5 *output* without ReLU -> P3-P7 (strides 8-128).
* Head per branch ``stacked_convs`` x (3x3 conv without bias, GroupNorm(32), ReLU): ``cls_convs`` / ``reg_convs``
  (mmdet names ``i.conv`` / ``i.gn``); ``gfl_cls`` 3x3 -> K (bias -log(99)), ``gfl_reg`` 3x3 -> 4 (reg_max + 1);
  per-level learnable ``scales.i.scale`` (init 1) multiplying the reg logits. Conv weights N(0, 0.01).
* One square prior per location: side ``8 * stride`` centred at ``(x * stride, y * stride)`` (mmdet v2
  ``center_offset = 0``).

Conventions:

* Input ``images`` float ``[B, 3, H, W]`` RGB 0..255; the model subtracts mmdet's ImageNet mean (123.675, 116.28,
  103.53) and divides by its std (58.395, 57.12, 57.375) (non-persistent buffers).
* ``feats``: ``p3..p7`` and the tower outputs ``cls_feat.pX`` / ``reg_feat.pX``.
* ``head["cls_logits"]`` ``[B, HW, K]`` sigmoid (column c = label c + 1), ``head["box_dist"]`` ``[B, HW, 4 * 17]``
  distribution logits (edges l, t, r, b; bins 0..reg_max in stride units; after the level's scale).
* ``priors`` ``[HW, 4]`` xyxy pixels per level.
* ``image_sizes``: priors at feature locations beyond the image's own area padded to 32 are invalid (mmdet's
  ``valid_flags``): they are ``ignore``d, never assigned and enter no loss.
* Assignment ATSS (top 9 per level; ``Assignment.thresholds`` per image = the per-GT mean + std that LD's VLR
  reuses); ``neg`` = every valid non-positive prior (QFL uses all of them).
* Losses (summed over levels, §3.2): ``task.cls`` QFL (β 2) / Σ_images max(n_pos, 1); ``task.box`` 2 · Σ ω GIoU-loss;
  ``task.dfl`` 0.25 · Σ ω DFL / 4; the last two divided by Σ ω + 1e-6, ω = max_c σ(z) of the positive (detached).
  The IoU quality target, GIoU and DFL are computed in stride units. ``raw_losses`` ``cls`` / ``box`` / ``dfl``
  are the unweighted terms.
* Decoding (``postprocess``, thresholds ``score_thresh``, ``nms_thresh``, ``nms_pre``, ``max_dets``, ``nms``): per
  level top ``nms_pre`` (1000) priors by max score, integral boxes clamped to the image's valid size, (box, class)
  pairs with score > 0.05, class-wise NMS 0.6, 100 detections. ``nms`` names the preset of
  ``detkd.ops.nms.NMS_PRESETS``: ``"greedy"`` (default, mmdet's ``multiclass_nms``) or ``"cluster-diou-voting"``
  (LD's score-voting Cluster-DIoU-NMS, METHODS.md §3.8: kept boxes refined by voting, scores unchanged).
* Built on ``detkd.models.dense.DenseDetector`` (``loss_weights`` = {"box": 2.0, "dfl": 0.25}).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import generalized_box_iou_loss

from detkd.models.dense import DenseDetector
from detkd.models.det_targets import gt_tensors
from detkd.models.resnet_fpn import LEVELS, STRIDES, freeze_stages, levels_of, resnet_fpn, set_norm_eval
from detkd.ops.assign import atss_assign
from detkd.ops.gfl import aligned_iou, bbox2distance, distance2bbox, distribution_focal_loss, integral, \
    quality_focal_loss
from detkd.ops.nms import get_nms
from detkd.registry import register
from detkd.structures import Assignment, DetOutput, HeadKey

MMDET_MEAN = (123.675, 116.28, 103.53)
MMDET_STD = (58.395, 57.12, 57.375)


@dataclass
class GFLConfig:
    name: str = "gfl"
    depth: int = 50
    num_classes: int = 80
    fpn_channels: int = 256
    stacked_convs: int = 4
    gn_groups: int = 32
    reg_max: int = 16
    octave_base_scale: int = 8
    atss_topk: int = 9
    qfl_beta: float = 2.0
    giou_weight: float = 2.0
    dfl_weight: float = 0.25
    frozen_stages: int = 1
    norm_eval: bool = True
    nms_pre: int = 1000
    score_thresh: float = 0.05
    nms_thresh: float = 0.6
    max_per_img: int = 100
    width: float = 1.0  # ResNet channel scale (CPU-sized light variants; 1.0 = torchvision's trunk)


class ConvGN(nn.Module):
    """mmcv ``ConvModule`` with GroupNorm: ``conv`` (3x3, no bias) -> ``gn`` -> ReLU."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.gn = nn.GroupNorm(groups, cout)
        nn.init.normal_(self.conv.weight, std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.gn(self.conv(x)))


class Scale(nn.Module):
    """mmcv ``Scale``: one learnable scalar ``scale`` (shape ``[]``)."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class GFLHead(nn.Module):
    def __init__(self, cfg: GFLConfig, num_levels: int = 5):
        super().__init__()
        c = cfg.fpn_channels
        self.cls_convs = nn.ModuleList(ConvGN(c, c, cfg.gn_groups) for _ in range(cfg.stacked_convs))
        self.reg_convs = nn.ModuleList(ConvGN(c, c, cfg.gn_groups) for _ in range(cfg.stacked_convs))
        self.gfl_cls = nn.Conv2d(c, cfg.num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(c, 4 * (cfg.reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        for m in (self.gfl_cls, self.gfl_reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
        nn.init.constant_(self.gfl_cls.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, x: Tensor, level: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``x [B, C, h, w]`` -> cls ``[B, h*w, K]``, dist ``[B, h*w, 4(n)]``, cls/reg tower maps ``[B, C, h, w]``."""
        cls_feat, reg_feat = x, x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        cls = self.gfl_cls(cls_feat).flatten(2).transpose(1, 2)  # [B, h*w, K]
        dist = self.scales[level](self.gfl_reg(reg_feat)).float().flatten(2).transpose(1, 2)  # [B, h*w, 4n]
        return cls, dist, cls_feat, reg_feat


def square_priors(fh: int, fw: int, stride: int, size: float, device=None) -> Tensor:
    """``[fh * fw, 4]`` xyxy squares of side ``size`` centred at ``(x * stride, y * stride)``, row-major."""
    ys = torch.arange(fh, device=device, dtype=torch.float32) * stride
    xs = torch.arange(fw, device=device, dtype=torch.float32) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    c = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)  # [HW, 2]
    return torch.cat([c - size / 2, c + size / 2], dim=1)


class GFL(DenseDetector):
    levels = LEVELS

    def __init__(self, cfg: GFLConfig, backbone: nn.Module | None = None, head: nn.Module | None = None):
        super().__init__()
        self.config = cfg
        self.backbone = backbone if backbone is not None else resnet_fpn(cfg.depth, cfg.fpn_channels, "p6p7", cfg.width)
        self.head = head if head is not None else GFLHead(cfg, len(LEVELS))
        self.register_buffer("pixel_mean", torch.tensor(MMDET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(MMDET_STD).view(1, 3, 1, 1), persistent=False)
        freeze_stages(self.backbone.body, cfg.frozen_stages)
        self.channels = {lvl: cfg.fpn_channels for lvl in LEVELS}
        self.strides = dict(zip(LEVELS, STRIDES))
        for lvl in LEVELS:
            for tower in ("cls_feat", "reg_feat"):
                self.channels[f"{tower}.{lvl}"] = cfg.fpn_channels
                self.strides[f"{tower}.{lvl}"] = self.strides[lvl]
        self.head_spec = {
            "cls_logits": HeadKey("sigmoid", cfg.num_classes),
            "box_dist": HeadKey("distribution", 4 * (cfg.reg_max + 1), encoding="ltrb", reg_max=cfg.reg_max),
        }
        self.loss_weights = {"box": cfg.giou_weight, "dfl": cfg.dfl_weight}
        self.thresholds = {"score_thresh": cfg.score_thresh, "nms_thresh": cfg.nms_thresh, "nms_pre": cfg.nms_pre,
                           "max_dets": cfg.max_per_img, "nms": "greedy"}
        self._prior_cache: dict[tuple, list[Tensor]] = {}

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            if self.config.norm_eval:
                set_norm_eval(self.backbone.body)
            if self.config.frozen_stages > 0:  # mmdet keeps frozen stages in eval mode
                body = self.backbone.body
                for name in ["conv1", "bn1"] + [f"layer{i}" for i in range(1, self.config.frozen_stages + 1)]:
                    getattr(body, name).eval()
        return self

    # ------------------------------------------------------------------------------------------ stages

    def features(self, x: Tensor) -> dict[str, Tensor]:
        return levels_of(self.backbone(x))  # p3..p7: [B, C, h_l, w_l]

    def head_forward(self, feats: dict[str, Tensor]) -> tuple[dict[str, list[Tensor]], dict[str, Tensor]]:
        head, taps = {"cls_logits": [], "box_dist": []}, {}
        for i, lvl in enumerate(LEVELS):
            cls, dist, taps[f"cls_feat.{lvl}"], taps[f"reg_feat.{lvl}"] = self.head(feats[lvl], i)
            head["cls_logits"].append(cls)
            head["box_dist"].append(dist)
        return head, taps

    def make_priors(self, height: int, width: int, device: torch.device) -> list[Tensor]:
        """One square prior per location and level (grid ``ceil(H / s) x ceil(W / s)``), xyxy pixels."""
        key = (int(height), int(width), str(device))
        if key not in self._prior_cache:
            if len(self._prior_cache) > 32:
                self._prior_cache.clear()
            self._prior_cache[key] = [
                square_priors(math.ceil(height / s), math.ceil(width / s), s, self.config.octave_base_scale * s, device)
                for s in STRIDES]
        return self._prior_cache[key]

    def valid_priors(self, out: DetOutput) -> Tensor:
        """bool ``[B, P]``: feature locations inside each image's own area padded to 32 (mmdet ``valid_flags``)."""
        rows = []
        for h, w in out.image_sizes:
            ph, pw = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
            level = []
            for lvl, s in zip(LEVELS, STRIDES):
                fh, fw = out.feats[lvl].shape[-2:]
                dev = out.feats[lvl].device
                vy = torch.arange(fh, device=dev) < min(math.ceil(ph / s), fh)
                vx = torch.arange(fw, device=dev) < min(math.ceil(pw / s), fw)
                level.append((vy[:, None] & vx[None, :]).reshape(-1))
            rows.append(torch.cat(level))
        return torch.stack(rows)

    # ------------------------------------------------------------------------------------- assign + loss

    @torch.no_grad()
    def assign(self, out: DetOutput, targets: list[dict]) -> Assignment:
        anchors = torch.cat(out.priors)  # [P, 4]
        sizes = [p.shape[0] for p in out.priors]
        b, p, dev = len(targets), anchors.shape[0], anchors.device
        valid = self.valid_priors(out)  # [B, P]
        labels = torch.zeros(b, p, dtype=torch.long, device=dev)
        matched = torch.full((b, p), -1, dtype=torch.long, device=dev)
        iou = torch.zeros(b, p, device=dev)
        thresholds = []
        for i, t in enumerate(targets):
            boxes, gt_labels = gt_tensors(t, i, self.config.num_classes, 1, dev)
            m = atss_assign(anchors, sizes, boxes, self.config.atss_topk, valid[i])
            matched[i], iou[i] = m.matched, m.iou
            labels[i] = torch.where(m.pos, gt_labels[m.matched.clamp(min=0)] if boxes.numel() else 0, 0)
            thresholds.append(m.thresholds)
        pos = matched >= 0
        return Assignment(labels=labels, matched=matched, pos=pos, neg=valid & ~pos, ignore=~valid, iou=iou,
                          thresholds=thresholds)

    def loss(self, out: DetOutput, targets: list[dict]) -> dict[str, Tensor]:
        """Unweighted GFL terms ``{"cls": QFL, "box": GIoU, "dfl": DFL}`` (normalised as in the module docstring)."""
        cfg, a = self.config, out.assign
        n = cfg.reg_max + 1
        cls = out.cat_head("cls_logits")  # [B, P, K]
        dist = out.cat_head("box_dist")  # [B, P, 4n]
        anchors = torch.cat(out.priors)  # [P, 4]
        stride = torch.cat([torch.full((p.shape[0],), float(s), device=anchors.device)
                            for p, s in zip(out.priors, STRIDES)])  # [P]
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2 / stride[:, None]  # [P, 2] stride units
        bi, pi = a.pos.nonzero(as_tuple=True)  # positives, image-major
        gt = anchors.new_zeros(bi.numel(), 4)
        for b, t in enumerate(targets):
            sel = bi == b
            if bool(sel.any()):
                boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=anchors.device).reshape(-1, 4)
                gt[sel] = boxes[a.matched[b, pi[sel]]]
        gt = gt / stride[pi, None]  # [n_pos, 4] stride units
        pred_dist = dist[bi, pi]  # [n_pos, 4n]
        pred_boxes = distance2bbox(centres[pi], integral(pred_dist, cfg.reg_max))  # [n_pos, 4]
        score = torch.zeros(a.pos.shape, device=cls.device)
        score[bi, pi] = aligned_iou(pred_boxes.detach(), gt)
        col = torch.where(a.pos, a.labels - 1, cfg.num_classes)  # [B, P], K = background
        valid = ~a.ignore
        qfl = quality_focal_loss(cls[valid], col[valid], score[valid], cfg.qfl_beta).sum()
        num_total = sum(max(int(k), 1) for k in a.pos.sum(1).tolist())
        weight = cls[bi, pi].detach().float().sigmoid().max(dim=1).values  # [n_pos] ω
        if bi.numel():
            giou = (generalized_box_iou_loss(pred_boxes, gt, reduction="none") * weight).sum()
            target = bbox2distance(centres[pi], gt, cfg.reg_max).reshape(-1)  # [n_pos * 4]
            dfl = (distribution_focal_loss(pred_dist.reshape(-1, n), target) * weight.repeat_interleave(4)).sum() / 4
        else:
            giou = dfl = dist.sum() * 0
        avg = weight.sum() + 1e-6
        return {"cls": qfl / num_total, "box": giou / avg, "dfl": dfl / avg}

    # ------------------------------------------------------------------------------------------ decode

    def decode(self, out: DetOutput, score_thresh: float, nms_thresh: float, nms_pre: int,
               max_dets: int, nms: str = "greedy") -> list[dict[str, Tensor]]:
        """mmdet v2 ``GFLHead.get_bboxes`` + ``multiclass_nms`` per image: ``{"boxes" xyxy, "scores", "labels"}``."""
        cfg = self.config
        suppress = get_nms(nms)
        dets = []
        for i, size in enumerate(out.image_sizes):
            boxes_all, scores_all = [], []
            for logits, dist, anchors, s in zip(out.head["cls_logits"], out.head["box_dist"], out.priors, STRIDES):
                scores = logits[i].float().sigmoid()  # [HW, K]
                d = dist[i]
                centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # [HW, 2]
                if 0 < nms_pre and (torch.jit.is_tracing() or nms_pre < scores.shape[0]):
                    # traced (ONNX export): k = min(nms_pre, HW) in the graph; the top-k of all HW locations
                    # only reorders the candidates, which the score-sorting NMS below undoes
                    top = scores.max(dim=1).values.topk(det_utils._topk_min(scores, nms_pre, 0)).indices
                    scores, d, centres = scores[top], d[top], centres[top]
                boxes_all.append(distance2bbox(centres, integral(d, cfg.reg_max) * s, max_shape=size))
                scores_all.append(scores)
            boxes, scores = torch.cat(boxes_all), torch.cat(scores_all)  # [N, 4], [N, K]
            idx, col = (scores > score_thresh).nonzero(as_tuple=True)
            boxes, scores = boxes[idx], scores[idx, col]
            boxes, scores, col, _ = suppress(boxes, scores, col, nms_thresh, max_dets)
            dets.append({"boxes": boxes, "scores": scores, "labels": col + 1})
        return dets


# -------------------------------------------------------------------------------------------- builders

@register("model", tiny={"depth": 18, "num_classes": 3, "fpn_channels": 16, "stacked_convs": 1, "gn_groups": 4})
def gfl(*, depth: int = 50, num_classes: int = 80, fpn_channels: int = 256, stacked_convs: int = 4,
        gn_groups: int = 32, reg_max: int = 16, octave_base_scale: int = 8, atss_topk: int = 9,
        qfl_beta: float = 2.0, giou_weight: float = 2.0, dfl_weight: float = 0.25, frozen_stages: int = 1,
        norm_eval: bool = True, nms_pre: int = 1000, score_thresh: float = 0.05, nms_thresh: float = 0.6,
        max_per_img: int = 100, width: float = 1.0) -> GFL:
    """GFL ResNet-FPN (mmdet ``gfl_r50_fpn_1x_coco`` at the defaults; random init)."""
    return GFL(GFLConfig("gfl", depth, num_classes, fpn_channels, stacked_convs, gn_groups, reg_max,
                         octave_base_scale, atss_topk, qfl_beta, giou_weight, dfl_weight, frozen_stages, norm_eval,
                         nms_pre, score_thresh, nms_thresh, max_per_img, width))
