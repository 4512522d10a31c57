"""Faster R-CNN: VGG C4 (faster-rcnn.pytorch, FGFI) and ResNet-FPN (torchvision, DeFeat), filling ``DetOutput``.

``model(images, targets=None, decode=False, image_sizes=None) -> DetOutput`` in any mode (METHODS.md §2.2,
§2.5, §4.2, §4.6; docs/contracts.md):

* ``images`` float ``[B, 3, H, W]`` RGB 0..255, padded by the data pipeline; ``image_sizes`` the valid
  ``(h, w)`` of each image (default: the whole tensor). The model normalises with its own buffers
  (``"imagenet"``: /255, mean/std, RGB, torchvision; ``"caffe"``: BGR minus (102.98, 115.95, 122.77),
  faster-rcnn.pytorch) and zeroes the padded area after normalising, as torchvision pads its normalised image.
* ``feats``: ``"c5"`` (VGG, stride 16) or ``"p2".."p6"`` (FPN, strides 4..64), and the RPN's shared 3x3 conv
  output ``"rpn_feat.<level>"`` (the feature its objectness and deltas both read); ``model.channels`` /
  ``model.strides`` declare them.
* ``head``: ``"rpn.objectness"`` ``[B, h*w*A, 1]`` and ``"rpn.box_reg"`` ``[B, h*w*A, 4]`` per level;
  ``priors`` the RPN anchors per level ``[h*w*A, 4]`` xyxy input pixels.
* ``rois``: ``RoIOutput``: proposals (after NMS), the RoIs the box head ran on (sampled when targets are
  given, else the proposals), their labels / matched GT, pooled feats, ``hidden``, ``cls_logits``, ``box_reg``.
* with targets: ``assign`` (the RPN's), ``losses`` = ``raw_losses`` = ``task.rpn_cls``, ``task.rpn_box``,
  ``task.roi_cls``, ``task.roi_box``. Proposal counts follow the train setting iff targets are given.
* with ``decode``: ``dets`` per image (boxes xyxy input pixels, scores, labels 1..K); with targets as well,
  the detections come from one extra RoI-head pass over all proposals (the sampled RoIs are not a test set).
* ``roi_forward(feats, proposals, image_sizes) -> RoIOutput`` runs the second stage on given boxes (DeFeat
  runs the teacher's RoI head on the student's RoIs); ``sample_rois(out, targets) -> RoIOutput`` re-runs the
  training path's proposal + sampling step on a finished forward (DeFeat's faithful SampleTEA).

Targets: ``boxes [N, 4]`` xyxy, ``labels [N]`` in 1..K. Boxes with ``x2 <= x1`` or ``y2 <= y1`` are dropped
(they have no area to match); a label outside 1..K is an error naming the image and the label.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor, nn

from detkd.models.dense import check_image_sizes
from detkd.models.rcnn_trunks import resnet_fpn, vgg_c4
from detkd.models.roi_head import RoIHeads, SingleLevelPooler, VGGBoxHead, fpn_pooler, two_mlp_head
from detkd.models.rpn import RPN
from detkd.registry import register
from detkd.structures import DetOutput, HeadKey, RoIOutput

FPN_LEVELS = ("p2", "p3", "p4", "p5", "p6")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (102.9801, 115.9465, 122.7717)


@dataclass
class FasterRCNNConfig:
    """Every knob of both families. Use ``FasterRCNNConfig.vgg()`` / ``.fpn()`` for the family defaults."""

    name: str = "faster_rcnn_fpn"
    num_classes: int = 20  # foreground classes K (predictor has K+1 columns)
    depth: int = 50  # VGG 11/13/16 or ResNet 18/34/50/101
    width: float = 1.0  # trunk channel scale, VGG or ResNet (light variants)
    norm: Literal["frozen", "bn"] = "frozen"  # ResNet norm layers
    trainable_layers: int = 3  # ResNet stages trained (torchvision semantics, 0..5)
    vgg_frozen: int = 10  # leading VGG ``features`` modules frozen (10 = conv1-2, FGFI teacher; 7 for VGG11)
    vgg_bn: bool = False  # BatchNorm after every VGG conv (torchvision's vgg*_bn layout): trains from scratch
    fpn_channels: int = 256
    normalize: Literal["imagenet", "caffe"] = "imagenet"
    anchor_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512])  # per level (FPN) / all (C4)
    aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    rpn_pre_nms: tuple[int, int] = (2000, 1000)  # (train, test) per level
    rpn_post_nms: tuple[int, int] = (2000, 1000)  # (train, test) per image
    rpn_nms: float = 0.7
    rpn_min_size: float = 1e-3
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch: int = 256
    rpn_pos_fraction: float = 0.5
    rpn_drop_outside: bool = False  # jwyang: anchors crossing the border are ignored in the RPN loss
    rpn_box_beta: float = 1 / 9  # smooth-L1 beta (1/sigma^2); 0 = L1 (mmdet)
    roi_pool: Literal["align", "pool"] = "align"
    roi_size: int = 7
    roi_sampling_ratio: int = 2
    hidden: int = 1024  # two-fc (FPN) or fc6/fc7 (VGG, 4096 at width 1) size
    dropout: float = 0.5  # VGG fc6/fc7 dropout
    roi_batch: int = 512
    roi_pos_fraction: float = 0.25
    roi_fg_iou: float = 0.5
    roi_bg_iou: float = 0.5
    roi_box_beta: float = 1 / 9
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    class_agnostic: bool = False
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100

    @classmethod
    def fpn(cls, **kw) -> "FasterRCNNConfig":
        """torchvision ``fasterrcnn_resnet50_fpn`` (= mmdet's DeFeat RPN/RCNN settings except the box losses)."""
        return cls(**{"name": "faster_rcnn_fpn", **kw})

    @classmethod
    def vgg(cls, **kw) -> "FasterRCNNConfig":
        """faster-rcnn.pytorch VGG16 as FGFI runs it (METHODS.md §2.2, §2.5)."""
        base = dict(name="faster_rcnn_vgg", depth=16, normalize="caffe", anchor_sizes=[128, 256, 512],
                    rpn_pre_nms=(12000, 6000), rpn_post_nms=(2000, 300), rpn_min_size=0.0, rpn_drop_outside=True,
                    rpn_box_beta=1 / 9, roi_sampling_ratio=0, hidden=4096, roi_batch=256, roi_box_beta=1.0,
                    score_thresh=0.0, nms_thresh=0.3)
        return cls(**{**base, **kw})


class FasterRCNN(nn.Module):
    """Backbone -> RPN -> RoI heads; see the module docstring for the outputs."""

    def __init__(self, cfg: FasterRCNNConfig):
        super().__init__()
        self.config = cfg
        self.is_fpn = cfg.name.startswith("faster_rcnn_fpn")
        if self.is_fpn:
            self.backbone = resnet_fpn(cfg.depth, cfg.fpn_channels, cfg.norm, cfg.trainable_layers, cfg.width)
            c = cfg.fpn_channels
            self.levels = list(FPN_LEVELS)
            self.channels = {lvl: c for lvl in self.levels}
            self.strides = {lvl: 2 ** (i + 2) for i, lvl in enumerate(self.levels)}
            if len(cfg.anchor_sizes) != len(self.levels):
                raise ValueError(f"FPN needs one anchor size per level {self.levels}, got {cfg.anchor_sizes}")
            sizes = [[s] for s in cfg.anchor_sizes]
            style, rpn_in = "torchvision", c
            pooler = fpn_pooler(self.levels[:4], cfg.roi_size, cfg.roi_sampling_ratio)
            box_head = two_mlp_head(c * cfg.roi_size ** 2, cfg.hidden)
        else:
            self.backbone, c = vgg_c4(cfg.depth, cfg.width, cfg.vgg_bn)
            for p in self.backbone[: cfg.vgg_frozen].parameters():
                p.requires_grad_(False)
            self.levels = ["c5"]
            self.channels, self.strides = {"c5": c}, {"c5": 16}
            sizes, style, rpn_in = [list(cfg.anchor_sizes)], "jwyang", c
            pooler = SingleLevelPooler("c5", cfg.roi_size, 16, cfg.roi_pool, cfg.roi_sampling_ratio)
            box_head = VGGBoxHead(c * cfg.roi_size ** 2, cfg.hidden, cfg.dropout)
        self.rpn = RPN(rpn_in, sizes, list(cfg.aspect_ratios), anchor_style=style, stride=16,
                       pre_nms=cfg.rpn_pre_nms, post_nms=cfg.rpn_post_nms, nms_thresh=cfg.rpn_nms,
                       min_size=cfg.rpn_min_size, fg_iou=cfg.rpn_fg_iou, bg_iou=cfg.rpn_bg_iou,
                       batch_per_image=cfg.rpn_batch, positive_fraction=cfg.rpn_pos_fraction,
                       drop_outside=cfg.rpn_drop_outside, box_beta=cfg.rpn_box_beta)
        self.roi_heads = RoIHeads(pooler, box_head, cfg.hidden, cfg.num_classes, class_agnostic=cfg.class_agnostic,
                                  fg_iou=cfg.roi_fg_iou, bg_iou=cfg.roi_bg_iou, batch_per_image=cfg.roi_batch,
                                  positive_fraction=cfg.roi_pos_fraction, box_beta=cfg.roi_box_beta,
                                  box_weights=cfg.box_weights, score_thresh=cfg.score_thresh,
                                  nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img)
        for lvl in list(self.levels):  # the RPN's shared 3x3 conv output per level (TDKD's teacher task feature)
            self.channels[f"rpn_feat.{lvl}"], self.strides[f"rpn_feat.{lvl}"] = rpn_in, self.strides[lvl]
        self.head_spec = {"rpn.objectness": HeadKey("objectness", 1), "rpn.box_reg": HeadKey("deltas", 4, "rcnn")}
        self.num_classes = cfg.num_classes  # the RoI head's softmax has num_classes + 1 columns (0 = background)
        self.thresholds = {"score_thresh": cfg.score_thresh, "nms_thresh": cfg.nms_thresh,
                           "max_dets": cfg.detections_per_img, "nms": "greedy"}
        if cfg.normalize == "imagenet":
            mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        else:
            mean, std = torch.tensor(CAFFE_BGR_MEAN), torch.ones(3)
        self.register_buffer("pixel_mean", mean.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.view(1, 3, 1, 1), persistent=False)

    # ---------------------------------------------------------------------------------------- helpers

    def normalize(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
        """Own normalisation (see the module docstring); the padded area becomes 0 afterwards."""
        if self.config.normalize == "imagenet":
            x = (images / 255.0 - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        else:
            x = images[:, [2, 1, 0]] - self.pixel_mean.to(images.dtype)
        h, w = images.shape[-2:]
        if any(s[0] < h or s[1] < w for s in image_sizes):
            x = x.clone()
            for i, (ih, iw) in enumerate(image_sizes):
                x[i, :, ih:, :] = 0
                x[i, :, :, iw:] = 0
        return x

    def features(self, x: Tensor) -> dict[str, Tensor]:
        if self.is_fpn:
            return dict(zip(self.levels, self.backbone(x).values()))  # "0".."3", "pool" -> p2..p6
        return {"c5": self.backbone(x)}

    def _targets(self, targets: list[dict], b: int, device) -> list[dict]:
        if len(targets) != b:
            raise ValueError(f"{len(targets)} targets for a batch of {b} images")
        out = []
        k = self.config.num_classes
        for i, t in enumerate(targets):
            boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
            labels = torch.as_tensor(t["labels"], dtype=torch.int64, device=device).reshape(-1)
            if labels.numel() != boxes.shape[0]:
                raise ValueError(f"target {i}: {boxes.shape[0]} boxes but {labels.numel()} labels")
            if labels.numel() and (labels.min() < 1 or labels.max() > k):
                bad = labels[(labels < 1) | (labels > k)][0].item()
                raise ValueError(f"target {i}: label {bad} outside 1..{k} (the model has num_classes={k}; "
                                 "does the config's class count match the data?)")
            ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            out.append({"boxes": boxes[ok], "labels": labels[ok]})
        return out

    # ---------------------------------------------------------------------------------------- forward

    def skippable(self, taps: Iterable[str]) -> tuple[str, ...]:
        """Optional parts of the forward that ``taps`` (feature / head taps a caller reads) do not need: the
        second stage (``"rois"``: proposals and the RoI head) never produces a tap."""
        return ("rois",)

    def forward(self, images: Tensor, targets: list[dict] | None = None, decode: bool = False,
                image_sizes: list[tuple[int, int]] | None = None, skip: Collection[str] = ()) -> DetOutput:
        """``skip=("rois",)`` (no targets, no decode) stops after the RPN's outputs: ``rois`` is ``None`` (a
        frozen teacher whose distillation reads only its taps)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Faster R-CNN expects RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
        unknown = set(skip) - {"rois"}
        if unknown:
            raise ValueError(f"FasterRCNN.forward: unknown skip parts {sorted(unknown)} (known: rois)")
        if skip and (targets is not None or decode):
            raise ValueError("FasterRCNN.forward: skip='rois' is for a forward without targets and without decode")
        b, (h, w) = images.shape[0], images.shape[-2:]
        sizes = check_image_sizes(images, image_sizes)
        feats = self.features(self.normalize(images, sizes))
        rpn_feats = [feats[k] for k in self.levels]
        objectness, box_reg, rpn_convs = self.rpn.run(rpn_feats)
        priors = self.rpn.anchors(rpn_feats, (h, w))
        train = targets is not None
        taps = {f"rpn_feat.{lvl}": t for lvl, t in zip(self.levels, rpn_convs)}
        out = DetOutput(feats={**feats, **taps}, head={"rpn.objectness": objectness, "rpn.box_reg": box_reg},
                        priors=priors, image_sizes=sizes)
        if skip:
            return out
        proposals = self.rpn.propose(priors, objectness, box_reg, sizes, train)
        if train:
            tg = self._targets(targets, b, images.device)
            out.assign, rpn_reg_t = self.rpn.assign(priors, tg, sizes)
            rpn_cls, rpn_box = self.rpn.loss(out.assign, objectness, box_reg, rpn_reg_t)
            rois, labels, matched, roi_reg_t = self.roi_heads.sample(proposals, tg)
            out.rois = replace(self.roi_forward(feats, rois, sizes), proposals=proposals, labels=labels, matched=matched)
            roi_cls, roi_box = self.roi_heads.loss(out.rois.cls_logits, out.rois.box_reg, labels, roi_reg_t)
            out.losses = {"task.rpn_cls": rpn_cls, "task.rpn_box": rpn_box, "task.roi_cls": roi_cls,
                          "task.roi_box": roi_box}
            out.raw_losses = {k.split(".", 1)[1]: v for k, v in out.losses.items()}
        else:
            out.rois = self.roi_forward(feats, proposals, sizes)
        if decode:  # with targets, the sampled RoIs are no test set: one more RoI-head pass over the proposals
            test = self.roi_forward(feats, proposals, sizes) if train else out.rois
            t = self.thresholds
            out.dets = self.roi_heads.postprocess(test.cls_logits, test.box_reg, test.rois, sizes, t["score_thresh"],
                                                  t["nms_thresh"], t["max_dets"], t["nms"])
        return out

    def roi_forward(self, feats: dict[str, Tensor], proposals: list[Tensor],
                    image_sizes: list[tuple[int, int]]) -> RoIOutput:
        """The second stage on given boxes (per image ``[n_i, 4]`` xyxy input pixels); no sampling, no loss."""
        pooled, hidden, cls_logits, box_reg = self.roi_heads.run(feats, proposals, image_sizes)
        return RoIOutput(proposals=proposals, rois=proposals, feats=pooled, hidden=hidden, cls_logits=cls_logits,
                         box_reg=box_reg)

    def sample_rois(self, out: DetOutput, targets: list[dict]) -> RoIOutput:
        """The training path's second stage on a finished forward ``out`` (e.g. an eval-mode teacher's): RPN
        proposals with the TRAIN pre/post-NMS counts from ``out``'s RPN outputs, GT boxes added, RoIs sampled
        against ``targets`` and scored by this model's box head. ``labels`` / ``matched`` are set; no loss.
        DeFeat's faithful SampleTEA pairing (METHODS.md §4.5) asks the teacher for this through the hook."""
        sizes = out.image_sizes
        tg = self._targets(targets, len(sizes), out.priors[0].device)
        proposals = self.rpn.propose(out.priors, out.head["rpn.objectness"], out.head["rpn.box_reg"], sizes, True)
        rois, labels, matched, _ = self.roi_heads.sample(proposals, tg)
        feats = {k: out.feats[k] for k in self.levels}
        return replace(self.roi_forward(feats, rois, sizes), proposals=proposals, labels=labels, matched=matched)

    @torch.no_grad()
    def postprocess(self, out: DetOutput, **thresholds) -> list[dict[str, Tensor]]:
        """Detections from ``out.rois``; keyword ``thresholds`` (``score_thresh``, ``nms_thresh``,
        ``max_dets``, ``nms`` = a preset of ``detkd.ops.nms``) override ``self.thresholds`` (``None`` = the
        model's default)."""
        unknown = set(thresholds) - set(self.thresholds)
        if unknown:
            raise TypeError(f"FasterRCNN.postprocess: unknown thresholds {sorted(unknown)} "
                            f"(known: {', '.join(self.thresholds)})")
        t = {k: (thresholds[k] if thresholds.get(k) is not None else v) for k, v in self.thresholds.items()}
        r = out.rois
        return self.roi_heads.postprocess(r.cls_logits, r.box_reg, r.rois, out.image_sizes, t["score_thresh"],
                                          t["nms_thresh"], t["max_dets"], t["nms"])


# -------------------------------------------------------------------------------------------- builders


def _build(family: str, kw: dict) -> FasterRCNN:
    kw = dict(kw)
    for key in ("rpn_pre_nms", "rpn_post_nms", "box_weights"):
        if key in kw:
            kw[key] = tuple(kw[key])
    cfg = FasterRCNNConfig.vgg(**kw) if family == "vgg" else FasterRCNNConfig.fpn(**kw)
    return FasterRCNN(cfg)


@register("model", tiny={"depth": 11, "width": 0.125, "hidden": 64, "num_classes": 3, "anchor_sizes": [32, 64, 128]})
def faster_rcnn_vgg(**kw) -> FasterRCNN:
    """faster-rcnn.pytorch C4 Faster R-CNN on VGG-11/13/16 (``depth``); keyword arguments: ``FasterRCNNConfig``."""
    return _build("vgg", kw)


@register("model", tiny={"depth": 18, "norm": "bn", "fpn_channels": 32, "hidden": 64, "num_classes": 3})
def faster_rcnn_fpn(**kw) -> FasterRCNN:
    """torchvision's Faster R-CNN ResNet-FPN (``depth`` 18/34/50/101); keyword arguments: ``FasterRCNNConfig``."""
    return _build("fpn", kw)


@register("model", tiny={"hidden": 64, "num_classes": 3})
def faster_rcnn_vgg_lite(**kw) -> FasterRCNN:
    """CPU-sized C4 model: VGG-11 at width 0.25 (128-channel conv5) with BatchNorm, 512-unit fc6/fc7, anchors
    32-128."""
    base = dict(name="faster_rcnn_vgg_lite", depth=11, width=0.25, hidden=512, vgg_frozen=0, vgg_bn=True,
                normalize="imagenet", anchor_sizes=[32, 64, 128], rpn_pre_nms=(2000, 1000), rpn_post_nms=(512, 300),
                roi_batch=128, score_thresh=0.05, nms_thresh=0.5)
    return _build("vgg", {**base, **kw})


@register("model", tiny={"fpn_channels": 32, "hidden": 64, "num_classes": 3})
def faster_rcnn_fpn_lite(**kw) -> FasterRCNN:
    """CPU-sized FPN model: ResNet-18 with trainable BN, 64-channel FPN, 256-unit two-fc head, anchors 16-256."""
    base = dict(name="faster_rcnn_fpn_lite", depth=18, norm="bn", trainable_layers=5, fpn_channels=64, hidden=256,
                anchor_sizes=[16, 32, 64, 128, 256], rpn_pre_nms=(1000, 500), rpn_post_nms=(512, 300), roi_batch=128)
    return _build("fpn", {**base, **kw})
