"""Foreign one-stage checkpoints -> detkd model files (safetensors + card), with strict key and shape checks.

* ``torchvision-retinanet``: a ``retinanet_resnet50_fpn`` state dict (``torch.save(model.state_dict())`` read with
  ``weights_only=True``, or .safetensors). detkd's RetinaNet has torchvision's keys, so the tensors load unchanged;
  pre-0.8 head keys ``conv.{2i}`` are renamed ``conv.{i}.0`` as torchvision's own loader does. The class count is
  read from ``cls_logits`` (91 for COCO) and the model keeps torchvision's label ids (``label_base=0``).
* ``mmdet-gfl``: mmdet v2 GFL / LD checkpoints (``{"state_dict": ...}``): ``backbone.*`` (mmdet ResNet = torchvision
  ResNet keys), ``neck.lateral_convs.i.conv``, ``neck.fpn_convs.i.conv`` (i = 3, 4: the P6 / P7 extra convs),
  ``bbox_head.{cls,reg}_convs.i.{conv,gn}``, ``bbox_head.gfl_cls``, ``bbox_head.gfl_reg``, ``bbox_head.scales.i.scale``
  and the constant buffer ``bbox_head.integral.project`` (checked to be 0..reg_max, then dropped). Depth, classes,
  reg_max, FPN width and tower depth are read from the tensors.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from detkd.models.weights import check_state, load_state_file, md5sum, save_model_file


def _v1_head_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision < 0.8 RetinaNet head keys ``conv.{2i}.*`` -> ``conv.{i}.0.*``."""
    out = {}
    for k, v in sd.items():
        m = re.match(r"(head\.(?:classification|regression)_head\.conv\.)(\d+)\.(weight|bias)$", k)
        if m and int(m.group(2)) % 2 == 0 and not re.search(r"conv\.\d+\.0\.", k):
            k = f"{m.group(1)}{int(m.group(2)) // 2}.0.{m.group(3)}"
        out[k] = v
    return out


def _resnet_depth(sd: dict[str, Tensor], prefix: str, source) -> int:
    blocks = {i: len({int(m.group(1)) for k in sd if (m := re.match(rf"{re.escape(prefix)}layer{i}\.(\d+)\.", k))})
              for i in range(1, 5)}
    bottleneck = f"{prefix}layer1.0.conv3.weight" in sd
    table = {(True, 6): 50, (True, 23): 101, (False, 2): 18, (False, 6): 34}
    depth = table.get((bottleneck, blocks[3]))
    if depth is None:
        raise ValueError(f"{source}: ResNet with blocks per stage {list(blocks.values())} "
                         f"({'bottleneck' if bottleneck else 'basic'}) is not ResNet-18/34/50/101")
    return depth


def import_torchvision_retinanet(src, out) -> dict:
    """Convert torchvision's ``retinanet_resnet50_fpn`` state dict; returns the card (written beside ``out``)."""
    from detkd.models.retinanet import retinanet

    src = Path(src)
    sd = _v1_head_keys(load_state_file(src))
    key = "head.classification_head.cls_logits.weight"
    if key not in sd or "head.regression_head.bbox_reg.weight" not in sd:
        raise ValueError(f"{src}: not a torchvision RetinaNet state dict (no {key}); keys start with "
                         f"{sorted(sd)[:5]}")
    anchors = sd["head.regression_head.bbox_reg.weight"].shape[0] // 4
    if anchors != 9:
        raise ValueError(f"{src}: {anchors} anchors per location; torchvision's RetinaNet has 9")
    model = retinanet(depth=_resnet_depth(sd, "backbone.body.", src), num_classes=sd[key].shape[0] // anchors,
                      label_base=0, fpn_channels=sd["backbone.fpn.inner_blocks.0.0.weight"].shape[0])
    check_state(model, sd, src)
    model.load_state_dict(sd, strict=True)
    return save_model_file(model, out, source={"path": str(src.resolve()), "md5": md5sum(src),
                                               "kind": "torchvision-retinanet"})


def mmdet_gfl_key(key: str) -> str | None:
    """detkd key of an mmdet GFL key (``None`` for the dropped ``integral.project`` buffer)."""
    if key == "bbox_head.integral.project":
        return None
    if key.startswith("backbone."):
        return "backbone.body." + key[len("backbone."):]
    if key.startswith("bbox_head."):
        return "head." + key[len("bbox_head."):]
    m = re.match(r"neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)$", key)
    if m:
        kind, i, p = m.group(1), int(m.group(2)), m.group(3)
        if kind == "lateral_convs":
            return f"backbone.fpn.inner_blocks.{i}.0.{p}"
        if i < 3:
            return f"backbone.fpn.layer_blocks.{i}.0.{p}"
        if i in (3, 4):
            return f"backbone.fpn.extra_blocks.{'p6' if i == 3 else 'p7'}.{p}"
    return key  # left as is: the strict check names it


def import_mmdet_gfl(src, out) -> dict:
    """Convert an mmdet v2 GFL / LD checkpoint; returns the card (written beside ``out``)."""
    from detkd.models.gfl import gfl

    src = Path(src)
    foreign = load_state_file(src)
    for key in ("bbox_head.gfl_cls.weight", "bbox_head.gfl_reg.weight", "neck.lateral_convs.0.conv.weight"):
        if key not in foreign:
            raise ValueError(f"{src}: not an mmdet GFL checkpoint (no {key}); keys start with {sorted(foreign)[:5]}")
    n_bins = foreign["bbox_head.gfl_reg.weight"].shape[0] // 4
    project = foreign.get("bbox_head.integral.project")
    if project is not None and not torch.equal(project.float(), torch.arange(n_bins, dtype=torch.float32)):
        raise ValueError(f"{src}: bbox_head.integral.project is not 0..{n_bins - 1}: {project.tolist()}")
    sd = {}
    for k, v in foreign.items():
        new = mmdet_gfl_key(k)
        if new is not None:
            sd[new] = v
    stacked = len({k.split(".")[2] for k in foreign if k.startswith("bbox_head.cls_convs.")})
    model = gfl(depth=_resnet_depth(sd, "backbone.body.", src), num_classes=foreign["bbox_head.gfl_cls.weight"].shape[0],
                fpn_channels=foreign["neck.lateral_convs.0.conv.weight"].shape[0], stacked_convs=stacked,
                reg_max=n_bins - 1)
    check_state(model, sd, src)
    model.load_state_dict(sd, strict=True)
    return save_model_file(model, out, source={"path": str(src.resolve()), "md5": md5sum(src), "kind": "mmdet-gfl"})


IMPORTERS = {"torchvision-retinanet": import_torchvision_retinanet, "mmdet-gfl": import_mmdet_gfl}
