"""Region proposal network of the Faster R-CNN family, assembled from torchvision parts.

torchvision's ``RegionProposalNetwork.forward`` switches proposal counts and losses on ``.training`` and
hides the anchor assignment; here the same parts (``RPNHead``, ``AnchorGenerator``, ``BoxCoder``,
``Matcher``, ``BalancedPositiveNegativeSampler``, ``batched_nms``) are called step by step and every
intermediate is returned:

* ``head(feats)`` -> per level ``objectness [B, h*w*A, 1]`` and ``box_reg [B, h*w*A, 4]`` (rcnn deltas,
  weights 1, 1, 1, 1), anchors ordered row-major (y, x) then anchor, as ``DetOutput.priors``; ``run(feats)``
  also returns the shared 3x3 conv output of each level.
* ``anchors(feats, input_hw)`` -> per level ``[h*w*A, 4]`` xyxy input pixels. ``"torchvision"`` anchors are
  ``AnchorGenerator``'s (rounded, zero-centred cells shifted by the stride); ``"jwyang"`` anchors are
  faster-rcnn.pytorch's ``generate_anchors`` (base 16, ratio-major, centre 7.5) shifted by 16 px.
* ``propose(...)`` -> per image ``[n_i, 4]`` proposals: top-k logits per level, decode, clip, drop tiny
  boxes, NMS per level, keep the best ``post_nms`` (torchvision's ``filter_proposals``). The train/test
  counts are chosen by ``train=`` (targets given), never by ``.training``.
* ``assign(...)`` / ``loss(...)``: ``Matcher(fg, bg, allow_low_quality_matches=True)``; with
  ``drop_outside`` (jwyang) anchors crossing the image border are ignored; 256 sampled anchors per image,
  half positive. Objectness BCE over the sampled anchors, smooth-L1 (``beta``; 0 = L1) over the sampled
  positives divided by the number of sampled anchors.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from detkd.structures import Assignment


def flatten_level(x: Tensor, k: int) -> Tensor:
    """``[B, A*k, h, w]`` -> ``[B, h*w*A, k]`` (row-major locations, then anchors)."""
    b, _, h, w = x.shape
    return x.view(b, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, k)


def jwyang_cell_anchors(sizes, ratios, base: int = 16) -> Tensor:
    """faster-rcnn.pytorch ``generate_anchors``: ``[len(ratios) * len(sizes), 4]`` ratio-major, inclusive pixels.

    The reference window is (0, 0, base-1, base-1); ``sizes`` are ``base * scales`` (128, 256, 512 for scales
    8, 16, 32). Python's ``round`` rounds half to even like numpy's, as in the reference.
    """
    ctr = 0.5 * (base - 1)
    out = []
    for r in ratios:
        ws = round(math.sqrt(base * base / r))
        hs = round(ws * r)
        for s in sizes:
            w, h = ws * s / base, hs * s / base
            out.append([ctr - 0.5 * (w - 1), ctr - 0.5 * (h - 1), ctr + 0.5 * (w - 1), ctr + 0.5 * (h - 1)])
    return torch.tensor(out, dtype=torch.float32)


class RPN(nn.Module):
    """RPN head + anchors + proposals + assignment + loss (see the module docstring)."""

    def __init__(self, in_channels: int, anchor_sizes: list[list[int]], aspect_ratios: list[float], *,
                 anchor_style: str = "torchvision", stride: int = 16, pre_nms: tuple[int, int] = (2000, 1000),
                 post_nms: tuple[int, int] = (2000, 1000), nms_thresh: float = 0.7, min_size: float = 1e-3,
                 fg_iou: float = 0.7, bg_iou: float = 0.3, batch_per_image: int = 256,
                 positive_fraction: float = 0.5, drop_outside: bool = False, box_beta: float = 1 / 9):
        super().__init__()
        if anchor_style not in ("torchvision", "jwyang"):
            raise ValueError(f"anchor_style must be torchvision or jwyang, got {anchor_style!r}")
        self.num_anchors = len(anchor_sizes[0]) * len(aspect_ratios)
        self.head = RPNHead(in_channels, self.num_anchors)
        self.anchor_style, self.stride = anchor_style, stride
        self.generator = AnchorGenerator(tuple(tuple(s) for s in anchor_sizes), (tuple(aspect_ratios),) * len(anchor_sizes))
        if anchor_style == "jwyang":
            self.register_buffer("jwyang_cell", jwyang_cell_anchors(anchor_sizes[0], aspect_ratios), persistent=False)
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou, bg_iou, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_per_image, positive_fraction)
        self.pre_nms, self.post_nms = tuple(pre_nms), tuple(post_nms)  # (train, test)
        self.nms_thresh, self.min_size = nms_thresh, min_size
        self.drop_outside, self.box_beta = drop_outside, box_beta
        self._anchor_cache: dict[tuple, list[Tensor]] = {}

    # ------------------------------------------------------------------------------------------ outputs

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level ``objectness [B, h*w*A, 1]``, ``box_reg [B, h*w*A, 4]``."""
        objectness, box_reg, _ = self.run(feats)
        return objectness, box_reg

    def run(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """``forward`` plus the shared 3x3 conv's output per level ``[B, C, h, w]`` (the feature both predictors
        read: TDKD's teacher task feature on Faster R-CNN). ``RPNHead.forward``'s computation, step by step."""
        convs = [self.head.conv(f) for f in feats]
        objectness = [flatten_level(self.head.cls_logits(t), 1) for t in convs]
        box_reg = [flatten_level(self.head.bbox_pred(t), 4) for t in convs]
        return objectness, box_reg, convs

    def anchors(self, feats: list[Tensor], input_hw: tuple[int, int]) -> list[Tensor]:
        """Per level ``[h*w*A, 4]`` float32 xyxy input pixels, cached per (grids, input size, device)."""
        grids = [tuple(f.shape[-2:]) for f in feats]
        dtype, device = torch.float32, feats[0].device  # float32 even under autocast (pixel coordinates)
        key = (tuple(grids), tuple(input_hw), str(device), dtype)
        hit = self._anchor_cache.get(key)
        if hit is not None:
            return hit
        if self.anchor_style == "jwyang":
            hit = []
            for gh, gw in grids:
                ys = torch.arange(gh, device=device, dtype=dtype) * self.stride
                xs = torch.arange(gw, device=device, dtype=dtype) * self.stride
                sy, sx = torch.meshgrid(ys, xs, indexing="ij")
                shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)  # [h*w, 1, 4]
                hit.append((shifts + self.jwyang_cell.to(device, dtype)[None]).reshape(-1, 4))
        else:  # exactly AnchorGenerator.forward, kept per level
            strides = [[torch.empty((), dtype=torch.int64, device=device).fill_(input_hw[0] // g[0]),
                        torch.empty((), dtype=torch.int64, device=device).fill_(input_hw[1] // g[1])] for g in grids]
            self.generator.set_cell_anchors(dtype, device)
            hit = self.generator.grid_anchors([list(g) for g in grids], strides)
        if len(self._anchor_cache) >= 32:
            self._anchor_cache.pop(next(iter(self._anchor_cache)))
        self._anchor_cache[key] = hit
        return hit

    # ---------------------------------------------------------------------------------------- proposals

    @torch.no_grad()
    def propose(self, anchors: list[Tensor], objectness: list[Tensor], box_reg: list[Tensor],
                image_sizes: list[tuple[int, int]], train: bool) -> list[Tensor]:
        """torchvision's ``filter_proposals``: per image ``[n_i, 4]`` xyxy, best first, detached."""
        pre_nms, post_nms = (self.pre_nms[0], self.post_nms[0]) if train else (self.pre_nms[1], self.post_nms[1])
        b = objectness[0].shape[0]
        obj = torch.cat([o.reshape(b, -1) for o in objectness], 1).detach().float()  # [B, P]
        deltas = torch.cat(box_reg, 1).detach().float()  # [B, P, 4]
        all_anchors = torch.cat(anchors)  # [P, 4]
        props = self.box_coder.decode_single(deltas.reshape(-1, 4), all_anchors.repeat(b, 1)).view(b, -1, 4)
        idx, offset, levels = [], 0, []
        for lvl, o in enumerate(objectness):
            n = o.shape[1]
            top = obj[:, offset:offset + n].topk(det_utils._topk_min(o, pre_nms, 1), dim=1)[1]  # [B, k]
            idx.append(top + offset)
            levels.append(torch.full((top.shape[1],), lvl, dtype=torch.int64, device=obj.device))
            offset += n
        idx = torch.cat(idx, 1)  # [B, K]
        levels = torch.cat(levels)  # [K]
        rows = torch.arange(b, device=obj.device)[:, None]
        scores_all, boxes_all = obj[rows, idx].sigmoid(), props[rows, idx]  # [B, K], [B, K, 4]
        out = []
        for boxes, scores, hw in zip(boxes_all, scores_all, image_sizes):
            boxes = clip_boxes_to_image(boxes, hw)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], levels[keep]
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[:post_nms]
            out.append(boxes[keep])
        return out

    # ----------------------------------------------------------------------------------- assign + loss

    @torch.no_grad()
    def assign(self, anchors: list[Tensor], targets: list[dict], image_sizes: list[tuple[int, int]]):
        """Match and sample every image; returns the ``Assignment`` ``[B, P]`` and box targets ``[B, P, 4]``.

        ``labels`` = matched GT class for every matcher positive (0 otherwise), ``pos`` / ``neg`` = the
        sampled anchors that enter the losses, ``ignore`` = between the thresholds (or outside the image
        with ``drop_outside``), ``iou`` = best IoU with any GT.
        """
        all_anchors = torch.cat(anchors)  # [P, 4]
        p, dev = all_anchors.shape[0], all_anchors.device
        rows = {k: [] for k in ("labels", "matched", "ignore", "iou", "reg", "obj")}
        for t, (h, w) in zip(targets, image_sizes):
            boxes, gl = t["boxes"], t["labels"]
            inside = None
            if self.drop_outside:
                inside = (all_anchors[:, 0] >= 0) & (all_anchors[:, 1] >= 0) & (all_anchors[:, 2] < w) & (all_anchors[:, 3] < h)
            if boxes.numel() == 0:
                matched = torch.full((p,), Matcher.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=dev)
                iou = torch.zeros(p, device=dev)
            else:
                quality = box_iou(boxes, all_anchors)  # [G, P]
                iou = quality.max(0)[0]
                if inside is not None:
                    quality = torch.where(inside[None], quality, torch.full_like(quality, -1.0))
                matched = self.matcher(quality)  # [P]: gt index, -1 below, -2 between
            obj = (matched >= 0).float()
            obj[matched == Matcher.BETWEEN_THRESHOLDS] = -1.0
            if inside is not None:
                obj[~inside] = -1.0
            safe = matched.clamp(min=0)
            labels = torch.where(obj > 0, gl[safe] if gl.numel() else torch.zeros_like(safe), torch.zeros_like(safe))
            reg = (self.box_coder.encode_single(boxes[safe], all_anchors) if boxes.numel()
                   else torch.zeros(p, 4, device=dev))
            rows["labels"].append(labels)
            rows["matched"].append(torch.where(obj > 0, matched, torch.full_like(matched, -1)))
            rows["ignore"].append(obj < 0)
            rows["iou"].append(iou)
            rows["reg"].append(reg)
            rows["obj"].append(obj)
        pos, neg = self.sampler(rows["obj"])
        st = {k: torch.stack(v) for k, v in rows.items()}
        assign = Assignment(labels=st["labels"], matched=st["matched"], pos=torch.stack(pos).bool(),
                            neg=torch.stack(neg).bool(), ignore=st["ignore"], iou=st["iou"])
        return assign, st["reg"]

    def loss(self, assign: Assignment, objectness: list[Tensor], box_reg: list[Tensor], reg_targets: Tensor):
        """``(rpn_cls, rpn_box)``: BCE over sampled anchors; box loss over sampled positives / #sampled."""
        obj = torch.cat(objectness, 1)[..., 0].float()  # [B, P]
        deltas = torch.cat(box_reg, 1).float()  # [B, P, 4]
        sampled = assign.pos | assign.neg
        n = sampled.sum().clamp(min=1)
        cls = F.binary_cross_entropy_with_logits(obj[sampled], assign.pos[sampled].float(), reduction="sum") / n
        box = F.smooth_l1_loss(deltas[assign.pos], reg_targets[assign.pos], beta=self.box_beta, reduction="sum") / n
        return cls, box
