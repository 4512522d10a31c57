"""``ToySigmoidDet``: a tiny multi-class dense detector with K sigmoid columns, built on ``DenseDetector``.

Two levels (strides 8 and 16), one conv stem per level, two square anchors per location (sizes 2·stride and
4·stride), torchvision-``Matcher`` IoU assignment (0.5 / 0.4, low-quality matches), sigmoid focal loss and an
L1 loss on the box deltas of torchvision's ``BoxCoder``. It is the smallest example of a family on the
skeleton and of a sigmoid classifier for the distillation tests (RetinaFace is a 2-way softmax).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import batched_nms, sigmoid_focal_loss

from detkd.models.dense import DenseDetector, flatten_level
from detkd.ops.assign import max_iou_match
from detkd.structures import Assignment, DetOutput, HeadKey


class ToySigmoidDet(DenseDetector):
    levels = ("p3", "p4")

    def __init__(self, num_classes: int = 3, c: int = 8, task_convs: bool = False, backbone: nn.Module | None = None):
        super().__init__()
        self.num_classes, self.anchors = num_classes, 2
        self.steps = {"p3": 8, "p4": 16}
        self.backbone = backbone or nn.ModuleDict({lvl: nn.Conv2d(3, c, 3, padding=1) for lvl in self.levels})
        self.cls_tower = nn.ModuleDict({lvl: nn.Conv2d(c, c, 1) for lvl in self.levels}) if task_convs else None
        self.cls = nn.ModuleDict({lvl: nn.Conv2d(c, self.anchors * num_classes, 1) for lvl in self.levels})
        self.box = nn.ModuleDict({lvl: nn.Conv2d(c, self.anchors * 4, 1) for lvl in self.levels})
        self.register_buffer("pixel_mean", torch.full((1, 3, 1, 1), 127.5), persistent=False)
        self.register_buffer("pixel_std", torch.full((1, 3, 1, 1), 64.0), persistent=False)
        self.coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.head_spec = {"cls_logits": HeadKey("sigmoid", num_classes), "box_reg": HeadKey("deltas", 4, "rcnn")}
        self.channels = {lvl: c for lvl in self.levels}
        self.strides = dict(self.steps)
        if task_convs:
            self.channels.update({f"cls_feat.{lvl}": c for lvl in self.levels})
            self.strides.update({f"cls_feat.{lvl}": s for lvl, s in self.steps.items()})
        self.thresholds = {"score_thresh": 0.05, "nms_thresh": 0.5, "max_dets": 100}
        self.loss_weights = {"box": 1.0}

    def features(self, x: Tensor) -> dict[str, Tensor]:
        return {lvl: F.relu(self.backbone[lvl](F.avg_pool2d(x, s, ceil_mode=True))) for lvl, s in self.steps.items()}

    def head_forward(self, feats):
        head, taps = {"cls_logits": [], "box_reg": []}, {}
        for lvl in self.levels:
            f = feats[lvl]
            if self.cls_tower is not None:
                taps[f"cls_feat.{lvl}"] = f = self.cls_tower[lvl](f)
            head["cls_logits"].append(flatten_level(self.cls[lvl](f), self.num_classes))
            head["box_reg"].append(flatten_level(self.box[lvl](feats[lvl]), 4))
        return head, taps

    def make_priors(self, height: int, width: int, device) -> list[Tensor]:
        out = []
        for s in self.steps.values():
            fh, fw = -(-height // s), -(-width // s)
            ys, xs = torch.meshgrid((torch.arange(fh, device=device) + 0.5) * s,
                                    (torch.arange(fw, device=device) + 0.5) * s, indexing="ij")
            ctr = torch.stack([xs, ys, xs, ys], -1)[:, :, None, :]  # [fh, fw, 1, 4]
            half = torch.tensor([s, 2 * s], device=device, dtype=torch.float32)[:, None] * torch.tensor(
                [-1.0, -1.0, 1.0, 1.0], device=device)  # [A, 4]
            out.append((ctr + half).reshape(-1, 4))
        return out

    @torch.no_grad()
    def assign(self, out: DetOutput, targets: list[dict]) -> Assignment:
        priors = torch.cat(out.priors)
        rows = [max_iou_match(t["boxes"].float().reshape(-1, 4), priors, 0.5, 0.4, True) for t in targets]
        matched = torch.stack([m.matched for m in rows])  # [B, P]
        labels = torch.stack([torch.where(m.pos, t["labels"][m.matched.clamp(min=0)], 0) if t["labels"].numel()
                              else torch.zeros_like(m.matched) for m, t in zip(rows, targets)])
        pos, neg = matched >= 0, matched == -1
        return Assignment(labels=labels, matched=matched.clamp(min=-1), pos=pos, neg=neg, ignore=~(pos | neg),
                          iou=torch.stack([m.iou for m in rows]))

    def loss(self, out: DetOutput, targets: list[dict]) -> dict[str, Tensor]:
        a = out.assign
        cls = out.cat_head("cls_logits")  # [B, P, K]
        box = out.cat_head("box_reg")  # [B, P, 4]
        onehot = F.one_hot(a.labels.clamp(min=0), self.num_classes + 1)[..., 1:].float()  # [B, P, K]
        valid = a.pos | a.neg
        n = a.pos.sum().clamp(min=1).float()
        l_cls = sigmoid_focal_loss(cls[valid], onehot[valid], reduction="sum") / n
        priors = torch.cat(out.priors)
        l_box = cls.new_zeros(())
        for i, t in enumerate(targets):
            idx = a.pos[i].nonzero().squeeze(1)
            if idx.numel():
                tgt = self.coder.encode_single(t["boxes"].float()[a.matched[i, idx]], priors[idx])
                l_box = l_box + F.l1_loss(box[i, idx], tgt, reduction="sum")
        return {"cls": l_cls, "box": l_box / n}

    def decode(self, out: DetOutput, score_thresh=0.05, nms_thresh=0.5, max_dets=100) -> list[dict[str, Tensor]]:
        priors = torch.cat(out.priors)
        dets = []
        for cls, box, (h, w) in zip(out.cat_head("cls_logits"), out.cat_head("box_reg"), out.image_sizes):
            scores = cls.sigmoid()  # [P, K]
            p_idx, k_idx = (scores > score_thresh).nonzero(as_tuple=True)
            boxes = self.coder.decode_single(box[p_idx], priors[p_idx])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            s = scores[p_idx, k_idx]
            keep = batched_nms(boxes, s, k_idx, nms_thresh)[:max_dets]
            dets.append({"boxes": boxes[keep], "scores": s[keep], "labels": k_idx[keep] + 1})
        return dets


def toy_targets(num_classes: int = 3) -> list[dict]:
    """Two images of a 64 x 96 batch: three boxes of different classes, and none."""
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 20.0, 22.0], [30.0, 10.0, 62.0, 44.0], [50.0, 30.0, 90.0, 62.0]]),
         "labels": torch.tensor([1, min(2, num_classes), num_classes])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
