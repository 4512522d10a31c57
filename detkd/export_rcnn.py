"""ONNX export of Faster R-CNN (``faster_rcnn_fpn``, ``faster_rcnn_vgg`` and their lite variants): one graph.

The whole eval-mode pipeline for batch 1, traced from detkd's own stages so it equals the eager model:
normalisation (padded area zeroed past ``image_size``), backbone (+ FPN), RPN head, anchors built in the graph
from the feature map sizes, proposal decoding + per-level top-k + clipping + small-box removal + NMS
(``RPN.propose``), RoIAlign (single level or multi-scale), box head, softmax, class-wise decoding, clipping,
score filter and per-class NMS (``RoIHeads.postprocess``).

Inputs: ``images [1, 3, H, W]`` RGB 0..255 (padded; ``H, W`` dynamic with ``--dynamic-size``) and
``image_size int64 [2]`` (the valid ``(h, w)``, ``DetOutput.image_sizes``). Outputs: ``boxes [N, 4]`` xyxy input
pixels, ``scores [N]``, ``labels int64 [N]`` (1-based), best first. The post-processing thresholds of a detector
protocol (``detkd.infer_detector``, default ``torchvision``) are baked in and recorded in the card; only the
``--with-nms`` form exists (raw RoI outputs depend on the proposals, so there is no meaningful "raw" graph), so
the exporter builds it whether or not ``with_nms`` was asked for.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from detkd.export import ExportOptions, GraphSpec, detector_nms_graph


class _FasterRCNNGraph(nn.Module):
    def __init__(self, model: nn.Module, thresholds: dict):
        super().__init__()
        self.model, self.thresholds = model, thresholds

    def _anchors(self, feats: list[Tensor], images: Tensor) -> list[Tensor]:
        """``RPN.anchors`` with the grid sizes (and torchvision-style strides) as graph values."""
        rpn = self.model.rpn
        if rpn.anchor_style == "jwyang":
            out = []
            for f in feats:
                ys = torch.arange(f.shape[2], dtype=torch.float32) * rpn.stride
                xs = torch.arange(f.shape[3], dtype=torch.float32) * rpn.stride
                sy, sx = torch.meshgrid(ys, xs, indexing="ij")
                shifts = torch.stack([sx, sy, sx, sy], dim=-1).reshape(-1, 1, 4)  # [h*w, 1, 4]
                out.append((shifts + rpn.jwyang_cell.to(torch.float32)[None]).reshape(-1, 4))
            return out
        grids = [[f.shape[2], f.shape[3]] for f in feats]
        strides = [[torch.div(torch.tensor(images.shape[2]), g[0], rounding_mode="floor"),
                    torch.div(torch.tensor(images.shape[3]), g[1], rounding_mode="floor")] for g in grids]
        rpn.generator.set_cell_anchors(torch.float32, torch.device("cpu"))
        return rpn.generator.grid_anchors(grids, strides)

    def forward(self, images: Tensor, image_size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = self.model
        x = images.float()
        h, w = x.shape[2], x.shape[3]
        x = m.normalize(x, [(h, w)])
        valid = (torch.arange(h)[:, None] < image_size[0]) & (torch.arange(w)[None, :] < image_size[1])  # [H, W]
        x = x * valid.to(x.dtype)  # the eager normalize zeroes the padded area the same way
        feats = m.features(x)
        rpn_feats = [feats[k] for k in m.levels]
        objectness, box_reg = m.rpn(rpn_feats)
        sizes = [(image_size[0], image_size[1])]
        proposals = m.rpn.propose(self._anchors(rpn_feats, images), objectness, box_reg, sizes, False)
        r = m.roi_forward(feats, proposals, sizes)
        t = self.thresholds
        d = m.roi_heads.postprocess(r.cls_logits, r.box_reg, r.rois, sizes, t["score_thresh"], t["nms_thresh"],
                                    t["max_dets"])[0]
        return d["boxes"], d["scores"], d["labels"]


def faster_rcnn_hook(model: nn.Module, opts: ExportOptions) -> GraphSpec:
    """The one-graph Faster R-CNN export (see the module docstring)."""
    return detector_nms_graph(model, opts, _FasterRCNNGraph)
