"""Foreign Faster R-CNN checkpoints and ImageNet trunks into detkd's Faster R-CNN.

* ``import_torchvision_fasterrcnn(src, out)``: a torchvision ``fasterrcnn_resnet{50,...}_fpn`` state dict
  (``torch.save(model.state_dict())`` or .safetensors). detkd's FPN model has torchvision's key layout, so
  keys map one to one; the pre-0.13 names (``fpn.inner_blocks.i.weight``, ``rpn.head.conv.weight``) are
  renamed. Depth (block counts), class count (``cls_score`` rows - 1) and class-agnostic boxes are read from
  the tensors. ``*.num_batches_tracked`` of a BatchNorm model are ignored (the import uses frozen BN, which
  computes the same thing in eval mode). Labels keep the file's ids (a COCO model: 1..90).
* ``import_jwyang_fasterrcnn(src, out)``: faster-rcnn.pytorch VGG (``RCNN_base.*``, ``RCNN_rpn.*``,
  ``RCNN_top.{0,3}``, ``RCNN_cls_score``, ``RCNN_bbox_pred``; FGFI's teacher/student). The 2-way softmax
  ``RPN_cls_score`` (channels 0..A-1 background, A..2A-1 object) becomes one objectness logit per anchor,
  ``w_obj - w_bg``: sigmoid(fg - bg) equals the reference's softmax object probability exactly. FGFI's
  student adaptation layer ``stu_feature_adap.*`` is not part of the detector and is dropped (recorded in
  the card). Depth from the number of convs, classes from ``RCNN_cls_score``.
* ``load_backbone_init(model, path)``: ``train.backbone_init``: torchvision ``vgg{11,13,16}`` state dicts
  (and jwyang's caffe ``vgg16_caffe.pth``, same keys: it needs ``normalize="caffe"``), ``features.N`` ->
  ``backbone.N``, ``classifier.{0,3}`` -> fc6/fc7; torchvision ``resnet*`` state dicts -> ``backbone.body``
  (``fc.*`` dropped). Strict: every trunk tensor must be there with its shape.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from detkd.models.weights import check_state, load_state_file, md5sum, save_model_file

_RESNET_BLOCKS = {(2, 2, 2, 2, False): 18, (3, 4, 6, 3, False): 34, (3, 4, 6, 3, True): 50, (3, 4, 23, 3, True): 101}


def _resnet_depth(sd: dict[str, Tensor], prefix: str, where) -> int:
    counts = []
    for layer in range(1, 5):
        idx = {int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(prefix)}layer{layer}\.(\d+)\.", k))}
        counts.append(len(idx))
    bottleneck = any(k.startswith(f"{prefix}layer1.0.conv3.") for k in sd)
    key = (*counts, bottleneck)
    if key not in _RESNET_BLOCKS:
        raise ValueError(f"{where}: ResNet blocks per stage {counts} (bottleneck={bottleneck}) are not ResNet-18/34/50/101")
    return _RESNET_BLOCKS[key]


def _finish(model: nn.Module, sd: dict[str, Tensor], src: Path, out, extra: dict | None = None) -> dict:
    check_state(model, sd, src)
    model.load_state_dict(sd, strict=True)
    source = {"path": str(src.resolve()), "md5": md5sum(src), **(extra or {})}
    return save_model_file(model, out, source=source, task="detection")


def torchvision_fasterrcnn_state(sd: dict[str, Tensor], where="state dict") -> tuple[dict[str, Tensor], dict]:
    """``(renamed state dict, builder kwargs)`` of a torchvision Faster R-CNN ResNet-FPN state dict."""
    if "roi_heads.box_predictor.cls_score.weight" not in sd or not any(k.startswith("backbone.body.") for k in sd):
        raise ValueError(f"{where}: not a torchvision Faster R-CNN ResNet-FPN state dict (no backbone.body.* / "
                         f"roi_heads.box_predictor.cls_score.weight; first keys: {list(sd)[:5]})")
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        k = re.sub(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)$", r"backbone.fpn.\1_blocks.\2.0.\3", k)
        k = re.sub(r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1", k)
        out[k] = v
    kw = {
        "depth": _resnet_depth(sd, "backbone.body.", where),
        "num_classes": sd["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1,
        "class_agnostic": sd["roi_heads.box_predictor.bbox_pred.weight"].shape[0] == 4,
        "fpn_channels": sd["backbone.fpn.layer_blocks.0.0.weight" if "backbone.fpn.layer_blocks.0.0.weight" in sd
                           else "backbone.fpn.layer_blocks.0.weight"].shape[0],
        "hidden": sd["roi_heads.box_head.fc7.weight"].shape[0],
        "norm": "frozen",
    }
    return out, kw


def import_torchvision_fasterrcnn(src, out, **overrides) -> dict:
    """torchvision ``fasterrcnn_*_fpn`` state dict -> detkd model file (returns the card)."""
    from detkd.models.faster_rcnn import faster_rcnn_fpn

    src = Path(src)
    sd, kw = torchvision_fasterrcnn_state(load_state_file(src), src)
    model = faster_rcnn_fpn(**{**kw, **overrides})
    return _finish(model, sd, src, out, {"format": "torchvision-fasterrcnn"})


_JW_RPN = {"RCNN_rpn.RPN_Conv": "rpn.head.conv.0.0", "RCNN_rpn.RPN_bbox_pred": "rpn.head.bbox_pred"}
_JW_HEAD = {"RCNN_top.0": "roi_heads.box_head.fc6", "RCNN_top.3": "roi_heads.box_head.fc7",
            "RCNN_cls_score": "roi_heads.box_predictor.cls_score", "RCNN_bbox_pred": "roi_heads.box_predictor.bbox_pred"}
_VGG_CONVS = {8: 11, 10: 13, 13: 16}


def jwyang_fasterrcnn_state(sd: dict[str, Tensor], where="state dict") -> tuple[dict[str, Tensor], dict, list[str]]:
    """``(renamed state dict, builder kwargs, dropped keys)`` of a faster-rcnn.pytorch VGG checkpoint."""
    if "RCNN_cls_score.weight" not in sd or not any(k.startswith("RCNN_base.") for k in sd):
        raise ValueError(f"{where}: not a faster-rcnn.pytorch VGG checkpoint (no RCNN_base.* / RCNN_cls_score.weight; "
                         f"first keys: {list(sd)[:5]})")
    out, dropped = {}, []
    for k, v in sd.items():
        if k.startswith("stu_feature_adap."):
            dropped.append(k)
            continue
        if k.startswith("RCNN_base."):
            out["backbone." + k[len("RCNN_base."):]] = v
            continue
        if k.startswith("RCNN_rpn.RPN_cls_score."):
            a = v.shape[0] // 2
            out["rpn.head.cls_logits." + k.rsplit(".", 1)[1]] = v[a:] - v[:a]  # object - background
            continue
        for old, new in {**_JW_RPN, **_JW_HEAD}.items():
            if k.startswith(old + "."):
                out[new + k[len(old):]] = v
                break
        else:
            out[k] = v  # left for the strict check to name
    convs = sum(1 for k in sd if re.match(r"RCNN_base\.\d+\.weight$", k) and sd[k].ndim == 4)
    if convs not in _VGG_CONVS:
        raise ValueError(f"{where}: {convs} convolutions in RCNN_base: not VGG-11/13/16")
    kw = {
        "depth": _VGG_CONVS[convs],
        "num_classes": sd["RCNN_cls_score.weight"].shape[0] - 1,
        "class_agnostic": sd["RCNN_bbox_pred.weight"].shape[0] == 4,
        "hidden": sd["RCNN_top.3.weight"].shape[0] if "RCNN_top.3.weight" in sd else 4096,
        "width": sd["RCNN_base.0.weight"].shape[0] / 64,  # 1.0 for the reference VGGs
    }
    return out, kw, dropped


def import_jwyang_fasterrcnn(src, out, **overrides) -> dict:
    """faster-rcnn.pytorch VGG checkpoint (``{"model": state_dict, "pooling_mode", ...}``) -> detkd model file."""
    from detkd.models.faster_rcnn import faster_rcnn_vgg

    src = Path(src)
    meta = {}
    if src.suffix != ".safetensors":
        try:
            obj = torch.load(src, map_location="cpu", weights_only=True)
        except Exception:  # load_state_file below names what is wrong with the file
            obj = None
        if isinstance(obj, dict):
            meta = {k: obj[k] for k in ("pooling_mode", "class_agnostic") if isinstance(obj.get(k), (str, bool))}
    sd, kw, dropped = jwyang_fasterrcnn_state(load_state_file(src), src)
    if meta.get("pooling_mode") in ("align", "pool"):
        kw["roi_pool"] = meta["pooling_mode"]
    model = faster_rcnn_vgg(**{**kw, **overrides})
    return _finish(model, sd, src, out, {"format": "jwyang-fasterrcnn", "dropped": dropped, **meta})


# ------------------------------------------------------------------------------------ backbone init


def backbone_state(model: nn.Module, sd: dict[str, Tensor], where) -> dict[str, Tensor]:
    """Map an ImageNet trunk state dict onto ``model`` (a ``FasterRCNN``) key names."""
    if any(k.startswith("features.") for k in sd):  # torchvision / caffe VGG
        if model.is_fpn:
            raise ValueError(f"{where}: a VGG state dict cannot initialise a ResNet-FPN model")
        out = {}
        for k, v in sd.items():
            if k.startswith("features."):
                out["backbone." + k[len("features."):]] = v
            elif k.startswith("classifier.0."):
                out["roi_heads.box_head.fc6." + k.rsplit(".", 1)[1]] = v
            elif k.startswith("classifier.3."):
                out["roi_heads.box_head.fc7." + k.rsplit(".", 1)[1]] = v
        return out
    if "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd):  # torchvision ResNet
        if not model.is_fpn:
            raise ValueError(f"{where}: a ResNet state dict cannot initialise a VGG model")
        return {"backbone.body." + k: v for k, v in sd.items() if not k.startswith("fc.")}
    raise ValueError(f"{where}: neither a torchvision VGG (features.*) nor a ResNet (conv1/layer1..4) state dict "
                     f"(first keys: {list(sd)[:5]})")


def load_backbone_init(model: nn.Module, path) -> list[str]:
    """Load an ImageNet trunk into ``model`` strictly (every trunk tensor present, shapes equal); returns the keys."""
    path = Path(path)
    sd = backbone_state(model, load_state_file(path), path)
    want = model.state_dict()
    trunk = [k for k in want if (k.startswith("backbone.body.") if model.is_fpn else k.startswith("backbone."))]
    if not model.is_fpn and any(k.startswith("roi_heads.box_head.") for k in sd):  # fc6 / fc7 when the file has
        trunk += [k for k in want if k.startswith("roi_heads.box_head.")]          # them (pretrain-trunk: no fc)
    has_nbt = any(k.endswith("num_batches_tracked") for k in sd)
    missing = [k for k in trunk if k not in sd and not (k.endswith("num_batches_tracked") and not has_nbt)]
    unexpected = [k for k in sd if k not in want and not k.endswith("num_batches_tracked")]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(want[k].shape)}" for k in sd
              if k in want and sd[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{n} ({len(v)}): {', '.join(v[:8])}" for n, v in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if v]
        raise ValueError(f"{path}: does not fit the {model.config.name} trunk: " + "; ".join(parts))
    sd = {k: v for k, v in sd.items() if k in want}
    model.load_state_dict(sd, strict=False)
    return sorted(sd)


__all__ = ["import_jwyang_fasterrcnn", "import_torchvision_fasterrcnn", "load_backbone_init", "check_state"]
