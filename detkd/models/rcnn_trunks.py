"""Backbones of the Faster R-CNN family (torchvision trunks, nothing downloaded).

* ``vgg_c4(depth, width)``: ``vgg{11,13,16}.features`` without the last max-pool (faster-rcnn.pytorch's
  ``RCNN_base``): conv5 after ReLU, stride 16, ``round(512 * width)`` channels. Module indices are those of
  torchvision's / jwyang's ``features`` so ``features.N`` keys map one to one. ``width`` scales every conv
  (light variants).
* ``resnet_fpn(depth, ...)``: torchvision's ``_resnet_fpn_extractor`` on ``resnet{18,34,50,101}`` (layers 1-4,
  ``FeaturePyramidNetwork`` + ``LastLevelMaxPool``): ``BackboneWithFPN`` with torchvision's key layout
  (``body.*``, ``fpn.*``), outputs ``"0".."3", "pool"`` = P2..P6, strides 4..64. ``norm="frozen"`` uses
  ``FrozenBatchNorm2d`` (torchvision's pretrained detectors, mmdet's ``norm_eval``), ``"bn"`` trainable BN.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN, _resnet_fpn_extractor
from torchvision.models.vgg import cfgs as VGG_CFGS
from torchvision.models.vgg import make_layers
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from detkd.models.resnet_fpn import narrow_resnet

VGG_DEPTHS = {11: "A", 13: "B", 16: "D"}
NORMS = ("frozen", "bn")


def vgg_c4(depth: int = 16, width: float = 1.0, batch_norm: bool = False) -> tuple[nn.Sequential, int]:
    """``(features[:-1], conv5 channels)`` of VGG-``depth`` with channels scaled by ``width``; ``batch_norm``:
    torchvision's ``vgg*_bn`` layout (conv, BN, ReLU), which trains from random init where plain VGG stalls."""
    if depth not in VGG_DEPTHS:
        raise ValueError(f"VGG depth must be one of {sorted(VGG_DEPTHS)}, got {depth}")
    cfg = [v if v == "M" else max(1, int(round(v * width))) for v in VGG_CFGS[VGG_DEPTHS[depth]]]
    features = make_layers(cfg, batch_norm=batch_norm)
    return nn.Sequential(*list(features)[:-1]), cfg[-2]


def resnet_fpn(depth: int = 50, out_channels: int = 256, norm: str = "frozen", trainable_layers: int = 3,
               width: float = 1.0) -> BackboneWithFPN:
    """torchvision's ResNet-FPN (``fasterrcnn_resnet50_fpn``'s backbone for depth 50), random init; ``width`` < 1:
    the narrow trunk of ``detkd.models.resnet_fpn.narrow_resnet``."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    norm_layer = FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d
    trunk = narrow_resnet(depth, width, norm_layer)
    fpn = _resnet_fpn_extractor(trunk, trainable_layers, norm_layer=None)
    if out_channels != 256:  # torchvision fixes 256; swap in an FPN of the requested width
        in_list = [trunk.inplanes // 8 * 2 ** (i - 1) for i in (1, 2, 3, 4)]
        fpn.fpn = FeaturePyramidNetwork(in_list, out_channels, extra_blocks=LastLevelMaxPool())
        fpn.out_channels = out_channels
    return fpn
