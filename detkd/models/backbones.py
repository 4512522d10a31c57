"""Backbone trunks with declared tap channels and strides (no dummy forwards).

* ``MobileNetV1``: the RetinaFace/TDKD MobileNetV1 of any width (METHODS.md §1.2, §1.3), split into
  ``stage1`` (stride 8), ``stage2`` (16), ``stage3`` (32). Width 0.25 = 64/128/256 channels (student), 0.75 =
  192/384/768 (TDKD teacher). Module names and Sequential indices are those of the biubug6 checkpoints:
  ``conv_bn`` = [0 conv, 1 BN, 2 act], ``conv_dw`` = [0 dw conv, 1 BN, 2 act, 3 pw conv, 4 BN, 5 act].
  No avg-pool / fc (the ImageNet ``fc.*`` is dropped when loading, see ``detkd.models.weights``).
* ``resnet50_trunk``: torchvision ResNet-50 (``weights=None``) cut after ``layer4`` with
  ``layer2/3/4`` returned (biubug6 ``cfg_re50``: 512/1024/2048 channels, strides 8/16/32).

``forward(x [B, 3, H, W]) -> {"stage1"|"layer2": [B, C1, H/8, W/8], ...}`` (ordered dicts, three entries).
``make_act(name)`` maps ``"relu"`` / ``"leaky0.1"`` to a fresh activation module.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter

ACTIVATIONS = ("relu", "leaky0.1")


def make_act(name: str) -> nn.Module:
    """A fresh activation: ``relu`` -> ReLU, ``leaky0.1`` -> LeakyReLU(0.1) (both in place, as the reference)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "leaky0.1":
        return nn.LeakyReLU(0.1, inplace=True)
    raise ValueError(f"unknown activation {name!r}; choose one of {ACTIVATIONS}")


def conv_bn(cin: int, cout: int, stride: int = 1, act: str | None = "relu", kernel: int = 3) -> nn.Sequential:
    """conv (bias-free) -> BN [-> act]: indices 0, 1(, 2)."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(make_act(act))
    return nn.Sequential(*layers)


def conv_dw(cin: int, cout: int, stride: int = 1, act: str = "relu") -> nn.Sequential:
    """Depthwise-separable block: dw 3x3 -> BN -> act -> pw 1x1 -> BN -> act (indices 0..5)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        make_act(act),
        nn.Conv2d(cin, cout, 1, 1, 0, bias=False),
        nn.BatchNorm2d(cout),
        make_act(act),
    )


class MobileNetV1(nn.Module):
    """RetinaFace MobileNetV1 trunk of width ``width`` (channel counts are ``round(32 * width) * k``)."""

    def __init__(self, width: float = 0.25, act: str = "relu"):
        super().__init__()
        base = int(round(32 * width))  # 8 for 0.25, 24 for 0.75
        if base <= 0 or abs(base - 32 * width) > 1e-6:
            raise ValueError(f"MobileNetV1 width {width} must be a multiple of 1/32")
        c = [base * k for k in (1, 2, 4, 8, 16, 32)]  # 8, 16, 32, 64, 128, 256 at width 0.25
        self.stage1 = nn.Sequential(
            conv_bn(3, c[0], 2, act),
            conv_dw(c[0], c[1], 1, act),
            conv_dw(c[1], c[2], 2, act),
            conv_dw(c[2], c[2], 1, act),
            conv_dw(c[2], c[3], 2, act),
            conv_dw(c[3], c[3], 1, act),
        )
        self.stage2 = nn.Sequential(conv_dw(c[3], c[4], 2, act), *[conv_dw(c[4], c[4], 1, act) for _ in range(5)])
        self.stage3 = nn.Sequential(conv_dw(c[4], c[5], 2, act), conv_dw(c[5], c[5], 1, act))
        self.channels = {"stage1": c[3], "stage2": c[4], "stage3": c[5]}
        self.strides = {"stage1": 8, "stage2": 16, "stage3": 32}

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        s1 = self.stage1(x)  # [B, 64w, H/8, W/8]
        s2 = self.stage2(s1)  # [B, 128w, H/16, W/16]
        s3 = self.stage3(s2)  # [B, 256w, H/32, W/32]
        return OrderedDict(stage1=s1, stage2=s2, stage3=s3)


def resnet50_trunk() -> nn.Module:
    """torchvision ResNet-50 (random init, nothing downloaded) returning layer2/3/4; keys ``conv1``, ``layer1``, ..."""
    trunk = IntermediateLayerGetter(resnet50(weights=None), {"layer2": "layer2", "layer3": "layer3", "layer4": "layer4"})
    trunk.channels = {"layer2": 512, "layer3": 1024, "layer4": 2048}
    trunk.strides = {"layer2": 8, "layer3": 16, "layer4": 32}
    return trunk
