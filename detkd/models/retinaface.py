"""RetinaFace (biubug6 / TDKD layout): MobileNetV1 of any width or ResNet-50, FPN, SSH, heads, loss, decoding.

Conventions (docs/contracts.md, METHODS.md §1.2-1.6, EVAL.md §4):

* Input ``images`` float ``[B, 3, H, W]`` RGB 0..255 (any H, W); the model flips to BGR and subtracts
  (104, 117, 123) from its own non-persistent buffer ``pixel_mean`` (so checkpoints keep their 300 keys).
* Levels ``p3, p4, p5`` = SSH outputs at strides 8/16/32, ``fpn_channels`` (64) channels. Heads per level, 2
  anchors per location: ``cls_logits [B, h*w*2, 2]`` (bg, face), ``box_reg [B, h*w*2, 4]``,
  ``landmarks [B, h*w*2, 10]``; prior order row-major (y, x) then anchor (``detkd.ops.priors``).
* ``task_convs=True`` (TDKD teacher) adds ``ClassHead.i.conv_dw_3x3`` / ``BboxHead.i.conv_dw_3x3`` (conv_dw
  64->64) before the 1x1 predictors; their outputs are the taps ``cls_feat.pX`` / ``reg_feat.pX``.
* ``activation``: ``"relu"`` (TDKD, first biubug6 release) or ``"leaky0.1"`` (biubug6 HEAD: LeakyReLU(0.1) in
  the MobileNet, and in FPN + SSH when ``fpn_channels <= 64``). Same keys, different function: pick per checkpoint.
* ``DetOutput.priors``: per level ``[h*w*2, 4]`` xyxy input pixels; the (cx, cy, w, h) originals the coders
  use stay cached per (H, W, device) (``priors_cxcywh``), so codes are those of the reference.
* ``head_spec``: ``cls_logits`` softmax over (bg, face), ``box_reg`` SSD deltas, ``landmarks`` SSD offsets.
* Targets: ``boxes [N, 4]`` xyxy pixels, ``landmarks [N, 5, 2]``, ``landmarks_valid [N]``; a face without
  landmarks gets label -1 (box + class losses only). N may be 0.
* Losses (MultiBoxLoss): ``task.loc = loc_weight * L_loc``, ``task.cls = L_conf``, ``task.landm = L_landm``;
  the unweighted terms are in ``raw_losses``. Decoding: softmax face score > ``score_thresh``, "+1" NMS
  (``postprocess(out, score_thresh=, nms_thresh=, top_k=, keep_top_k=)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkd.models.backbones import MobileNetV1, conv_dw, resnet50_trunk
from detkd.models.necks import FPN, SSH
from detkd.models.dense import DenseDetector
from detkd.ops.assign import retinaface_hard_negatives, retinaface_match
from detkd.ops.boxes import decode_boxes, decode_landmarks, encode_boxes, encode_landmarks
from detkd.ops.nms import get_nms, nms_plus1, reference_order
from detkd.ops.priors import PriorCache
from detkd.registry import register
from detkd.structures import Assignment, DetOutput, HeadKey

LEVELS = ("p3", "p4", "p5")
BGR_MEAN = (104.0, 117.0, 123.0)


@dataclass
class RetinaFaceConfig:
    name: str = "retinaface_mnet"
    width: float = 0.25  # MobileNetV1 width (0.25 student, 0.75 TDKD teacher); unused by retinaface_r50
    activation: Literal["relu", "leaky0.1"] = "relu"
    task_convs: bool = False
    min_sizes: list[list[int]] = field(default_factory=lambda: [[16, 32], [64, 128], [256, 512]])
    steps: list[int] = field(default_factory=lambda: [8, 16, 32])
    variance: tuple[float, float] = (0.1, 0.2)
    fpn_channels: int = 64
    loc_weight: float = 2.0
    pos_iou: float = 0.35
    forced_iou: float = 0.2
    neg_pos: int = 7

    @classmethod
    def r50(cls, **kw) -> "RetinaFaceConfig":
        """biubug6 ``cfg_re50``: ResNet-50 body, 256-channel FPN/SSH."""
        return cls(**{"name": "retinaface_r50", "fpn_channels": 256, **kw})


class TaskHead(nn.Module):
    """1x1 predictor (with bias) of ``k`` values per anchor, optionally after a ``conv_dw_3x3`` task block."""

    def __init__(self, cin: int, num_anchors: int, k: int, task_conv: bool = False, act: str = "relu"):
        super().__init__()
        self.k = k
        if task_conv:
            self.conv_dw_3x3 = conv_dw(cin, cin, 1, act)
        self.conv1x1 = nn.Conv2d(cin, num_anchors * k, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feat = self.conv_dw_3x3(x) if hasattr(self, "conv_dw_3x3") else x  # [B, C, h, w]
        out = self.conv1x1(feat).permute(0, 2, 3, 1)  # [B, h, w, A*k]
        return out.reshape(out.shape[0], -1, self.k), feat  # [B, h*w*A, k]


class RetinaFace(DenseDetector):
    """RetinaFace on the dense skeleton (``detkd.models.dense``): ``body`` -> FPN + 3 SSH -> 3 task heads.

    ``body=None`` builds the config's default trunk (MobileNetV1 of ``cfg.width``, or ResNet-50 for
    ``retinaface_r50``); ``in_channels`` are the body's output channels (default: ``body.channels``).
    State-dict keys are the reference's (``body.*``, ``fpn.*``, ``ssh1..3``, ``ClassHead``, ``BboxHead``,
    ``LandmarkHead``), so the neck and heads stay direct attributes.
    """

    levels = LEVELS

    def __init__(self, body: nn.Module | None = None, in_channels: list[int] | None = None,
                 cfg: RetinaFaceConfig | None = None):
        super().__init__()
        cfg = cfg or RetinaFaceConfig()
        if len(cfg.steps) != 3 or len(cfg.min_sizes) != 3:
            raise ValueError(f"RetinaFace has 3 levels; got steps {cfg.steps}, min_sizes {cfg.min_sizes}")
        if body is None:
            body = resnet50_trunk() if cfg.name == "retinaface_r50" else MobileNetV1(cfg.width, cfg.activation)
        if in_channels is None:
            in_channels = list(body.channels.values())
        self.config = cfg
        c = cfg.fpn_channels
        neck_act = cfg.activation if c <= 64 else "relu"  # reference: leaky only where out_channels <= 64
        self.body = body
        self.fpn = FPN(in_channels, c, neck_act)
        self.ssh1, self.ssh2, self.ssh3 = (SSH(c, c, neck_act) for _ in range(3))
        anchors = [len(m) for m in cfg.min_sizes]
        tc, act = cfg.task_convs, cfg.activation
        self.ClassHead = nn.ModuleList(TaskHead(c, a, 2, tc, act) for a in anchors)
        self.BboxHead = nn.ModuleList(TaskHead(c, a, 4, tc, act) for a in anchors)
        self.LandmarkHead = nn.ModuleList(TaskHead(c, a, 10) for a in anchors)
        self.register_buffer("pixel_mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.prior_cache = PriorCache(cfg.min_sizes, cfg.steps)
        self.variance = tuple(cfg.variance)
        # default decode = biubug6 HEAD test settings
        self.thresholds = {"score_thresh": 0.02, "nms_thresh": 0.4, "top_k": None, "keep_top_k": None,
                           "nms": "greedy"}
        self.loss_weights = {"loc": cfg.loc_weight}
        self.head_spec = {
            "cls_logits": HeadKey("softmax", 2),
            "box_reg": HeadKey("deltas", 4, "ssd"),
            "landmarks": HeadKey("landmarks", 10, "ssd"),
        }
        self.channels = {lvl: c for lvl in LEVELS}
        self.strides = dict(zip(LEVELS, cfg.steps))
        if tc:
            for lvl, s in zip(LEVELS, cfg.steps):
                self.channels.update({f"cls_feat.{lvl}": c, f"reg_feat.{lvl}": c})
                self.strides.update({f"cls_feat.{lvl}": s, f"reg_feat.{lvl}": s})

    # ------------------------------------------------------------------------------------ stages

    def preprocess(self, images: Tensor) -> Tensor:
        return images[:, [2, 1, 0]] - self.pixel_mean.to(images.dtype)  # RGB -> BGR, minus mean

    def features(self, x: Tensor) -> dict[str, Tensor]:
        fpn = self.fpn(list(self.body(x).values()))
        return dict(zip(LEVELS, (self.ssh1(fpn[0]), self.ssh2(fpn[1]), self.ssh3(fpn[2]))))  # [B, C, h_l, w_l]

    def head_forward(self, feats: dict[str, Tensor]) -> tuple[dict[str, list[Tensor]], dict[str, Tensor]]:
        head = {"cls_logits": [], "box_reg": [], "landmarks": []}
        taps = {}
        for i, lvl in enumerate(LEVELS):
            f = feats[lvl]
            cls, cls_feat = self.ClassHead[i](f)
            box, reg_feat = self.BboxHead[i](f)
            head["cls_logits"].append(cls)
            head["box_reg"].append(box)
            head["landmarks"].append(self.LandmarkHead[i](f)[0])
            if self.config.task_convs:
                taps[f"cls_feat.{lvl}"], taps[f"reg_feat.{lvl}"] = cls_feat, reg_feat
        return head, taps

    def make_priors(self, height: int, width: int, device: torch.device) -> list[Tensor]:
        """Per level ``[h*w*A, 4]`` xyxy pixels; (cx, cy, w, h) stay cached for the coders (``priors_cxcywh``)."""
        return self.prior_cache.xyxy(height, width, device)

    def priors_cxcywh(self, out: DetOutput) -> Tensor:
        """``[P, 4]`` (cx, cy, w, h) priors of ``out`` (the cached originals, so codes are bit-identical)."""
        return torch.cat(self.prior_cache.cxcywh_of(out.priors))

    # ------------------------------------------------------------------------------- assign + loss

    @torch.no_grad()
    def assign(self, out: DetOutput, targets: list[dict]) -> Assignment:
        """RetinaFace's matcher + hard-negative mining (``detkd.ops.assign``); labels -1 = no landmarks."""
        cfg = self.config
        priors_xyxy = torch.cat(out.priors)  # [P, 4]
        b, p, dev = len(targets), priors_xyxy.shape[0], priors_xyxy.device
        labels = torch.zeros(b, p, dtype=torch.long, device=dev)
        matched = torch.full((b, p), -1, dtype=torch.long, device=dev)
        iou = torch.zeros(b, p, device=dev)
        for i, t in enumerate(targets):
            boxes = _boxes(t, dev)  # [G, 4]
            m = retinaface_match(boxes, priors_xyxy, cfg.pos_iou, cfg.forced_iou)
            iou[i] = m.iou
            if not bool(m.pos.any()):
                continue
            _, valid = _landmarks(t, boxes.shape[0], dev)  # [G]
            pos_idx = m.pos.nonzero().squeeze(1)  # [n_pos]
            gt = m.matched[pos_idx]
            matched[i, pos_idx] = gt
            labels[i, pos_idx] = torch.where(valid[gt], 1, -1)
        pos = labels != 0  # [B, P]
        neg, neg_rank = retinaface_hard_negatives(out.cat_head("cls_logits"), pos, cfg.neg_pos)
        return Assignment(labels=labels, matched=matched, pos=pos, neg=neg, ignore=~(pos | neg), iou=iou,
                          neg_rank=neg_rank)

    @torch.no_grad()
    def regression_targets(self, out: DetOutput, targets: list[dict]) -> tuple[Tensor, Tensor]:
        """Encoded box ``[B, P, 4]`` and landmark ``[B, P, 10]`` targets of the positives of ``out.assign``."""
        a = out.assign
        priors = self.priors_cxcywh(out)  # [P, 4]
        b, p, dev = a.pos.shape[0], a.pos.shape[1], priors.device
        loc_t = torch.zeros(b, p, 4, device=dev)
        landm_t = torch.zeros(b, p, 10, device=dev)
        for i, t in enumerate(targets):
            if not bool(a.pos[i].any()):
                continue
            boxes = _boxes(t, dev)
            lms, _ = _landmarks(t, boxes.shape[0], dev)  # [G, 5, 2]
            pos_idx = a.pos[i].nonzero().squeeze(1)  # [n_pos]
            gt = a.matched[i, pos_idx]
            loc_t[i, pos_idx] = encode_boxes(boxes[gt], priors[pos_idx], self.variance)
            landm_t[i, pos_idx] = encode_landmarks(lms[gt], priors[pos_idx], self.variance)
        return loc_t, landm_t

    def loss(self, out: DetOutput, targets: list[dict]) -> dict[str, Tensor]:
        """MultiBoxLoss (METHODS.md §1.6): the unweighted ``loc`` / ``cls`` / ``landm`` of ``out.assign``."""
        a = out.assign
        loc = out.cat_head("box_reg")  # [B, P, 4]
        conf = out.cat_head("cls_logits")  # [B, P, 2]
        landm = out.cat_head("landmarks")  # [B, P, 10]
        loc_t, landm_t = self.regression_targets(out, targets)
        pos, pos1 = a.pos, a.labels > 0  # [B, P]
        n = pos.sum().clamp(min=1).float()
        n1 = pos1.sum().clamp(min=1).float()
        # losses in float32 even under AMP (targets are float32)
        loss_loc = F.smooth_l1_loss(loc[pos].float(), loc_t[pos], reduction="sum") / n
        loss_landm = F.smooth_l1_loss(landm[pos1].float(), landm_t[pos1], reduction="sum") / n1
        sel = pos | a.neg
        loss_cls = F.cross_entropy(conf[sel].float(), pos[sel].long(), reduction="sum") / n
        return {"loc": loss_loc, "cls": loss_cls, "landm": loss_landm}

    # ------------------------------------------------------------------------------------------ decode

    def decode(self, out: DetOutput, score_thresh: float = 0.02, nms_thresh: float = 0.4, top_k: int | None = None,
               keep_top_k: int | None = None, nms: str = "greedy") -> list[dict[str, Tensor]]:
        """Detections per image in input pixels (``postprocess`` fills the defaults from ``self.thresholds``)."""
        return decode_detections(
            out.cat_head("cls_logits"), out.cat_head("box_reg"), out.cat_head("landmarks"), self.priors_cxcywh(out),
            self.variance, score_thresh, nms_thresh, top_k, keep_top_k, nms,
        )


def _boxes(t: dict, dev) -> Tensor:
    """A target's GT boxes ``[G, 4]`` float32 xyxy."""
    return torch.as_tensor(t["boxes"], dtype=torch.float32, device=dev).reshape(-1, 4)


def _landmarks(t: dict, g: int, dev) -> tuple[Tensor, Tensor]:
    """A target's landmarks ``[G, 5, 2]`` and validity ``[G]`` (missing key = no landmarks)."""
    if t.get("landmarks") is None:
        return torch.zeros(g, 5, 2, device=dev), torch.zeros(g, dtype=torch.bool, device=dev)
    lms = torch.as_tensor(t["landmarks"], dtype=torch.float32, device=dev).reshape(g, 5, 2)
    valid = t.get("landmarks_valid")
    valid = lms[:, 0, 0] >= 0 if valid is None else torch.as_tensor(valid, device=dev).reshape(g).bool()
    return lms, valid


@torch.no_grad()
def decode_detections(cls_logits: Tensor, box_reg: Tensor, landm: Tensor, priors: Tensor, variance,
                      conf_thresh: float = 0.02, nms_thresh: float = 0.4, top_k: int | None = None,
                      keep_top_k: int | None = None, nms: str = "greedy") -> list[dict[str, Tensor]]:
    """Reference post-processing per image: face prob > conf (strict), optional top-k, "+1" NMS, optional keep.

    ``cls_logits [B, P, 2]``, ``box_reg [B, P, 4]``, ``landm [B, P, 10]``, ``priors [P, 4]`` cxcywh pixels.
    Only the priors that pass the score filter are decoded. Output rows are in descending score order.
    ``nms``: ``"greedy"`` is the reference's "+1" greedy NMS (``nms_plus1``); any other preset of
    ``detkd.ops.nms`` (``"cluster-diou-voting"``) replaces it on the continuous boxes, ``keep_top_k`` becoming its
    per-image cap; voting refines the kept boxes, the landmarks stay those of the kept priors.
    """
    suppress = None if nms == "greedy" else get_nms(nms)
    scores_all = torch.softmax(cls_logits.float(), dim=-1)[..., 1]  # [B, P]
    dets = []
    for b in range(scores_all.shape[0]):
        idx = (scores_all[b] > conf_thresh).nonzero().squeeze(1)  # [n]
        scores = scores_all[b, idx]
        if top_k is not None and idx.numel() > top_k:
            first = reference_order(scores)[:top_k]
            idx, scores = idx[first], scores[first]
        pri = priors[idx]
        boxes = decode_boxes(box_reg[b, idx].float(), pri, variance)  # [n, 4]
        if suppress is None:
            keep = nms_plus1(boxes, scores, nms_thresh)
            if keep_top_k is not None:
                keep = keep[:keep_top_k]
            kept_boxes = boxes[keep]
        else:
            cap = boxes.shape[0] if keep_top_k is None else keep_top_k
            kept_boxes, _, _, keep = suppress(boxes, scores, torch.zeros_like(idx), nms_thresh, cap)
        idx = idx[keep]
        dets.append({
            "boxes": kept_boxes,
            "scores": scores[keep],
            "labels": torch.ones(keep.numel(), dtype=torch.long, device=boxes.device),
            "landmarks": decode_landmarks(landm[b, idx].float(), priors[idx], variance),  # [N, 5, 2]
        })
    return dets


# -------------------------------------------------------------------------------------------- builders

def _config(name: str, **kw) -> RetinaFaceConfig:
    kw = {k: v for k, v in kw.items() if v is not None}
    if "variance" in kw:
        kw["variance"] = tuple(kw["variance"])
    if "min_sizes" in kw:
        kw["min_sizes"] = [list(m) for m in kw["min_sizes"]]
    return RetinaFaceConfig(name=name, **kw)


@register("model", tiny={"width": 0.25, "task_convs": True})
def retinaface_mnet(*, width: float = 0.25, activation: str = "relu", task_convs: bool = False,
                    min_sizes=None, steps=None, variance=None, fpn_channels: int = 64, loc_weight: float = 2.0,
                    pos_iou: float = 0.35, forced_iou: float = 0.2, neg_pos: int = 7) -> RetinaFace:
    """RetinaFace on MobileNetV1 of ``width`` (0.25 = biubug6 mnet / TDKD student, 0.75 + task_convs = TDKD teacher)."""
    cfg = _config("retinaface_mnet", width=width, activation=activation, task_convs=task_convs, min_sizes=min_sizes,
                  steps=steps, variance=variance, fpn_channels=fpn_channels, loc_weight=loc_weight,
                  pos_iou=pos_iou, forced_iou=forced_iou, neg_pos=neg_pos)
    return RetinaFace(cfg=cfg)


@register("model", tiny={"fpn_channels": 16})
def retinaface_r50(*, width: float | None = None, activation: str = "relu", task_convs: bool = False,
                   min_sizes=None, steps=None, variance=None, fpn_channels: int = 256, loc_weight: float = 2.0,
                   pos_iou: float = 0.35, forced_iou: float = 0.2, neg_pos: int = 7) -> RetinaFace:
    """RetinaFace on torchvision ResNet-50 (biubug6 ``cfg_re50``; random init, ``width`` is ignored)."""
    cfg = _config("retinaface_r50", width=width, activation=activation, task_convs=task_convs, min_sizes=min_sizes,
                  steps=steps, variance=variance, fpn_channels=fpn_channels, loc_weight=loc_weight,
                  pos_iou=pos_iou, forced_iou=forced_iou, neg_pos=neg_pos)
    return RetinaFace(cfg=cfg)
