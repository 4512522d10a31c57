"""ResNet + FPN trunks giving P3-P7 (strides 8-128) for RetinaNet and GFL, built from torchvision parts.

``resnet_fpn(depth, fpn_channels, extra)`` returns torchvision's ``BackboneWithFPN`` (keys ``body.*`` = the ResNet
without ``fc``, ``fpn.inner_blocks.i.0`` laterals, ``fpn.layer_blocks.i.0`` 3x3 outputs, ``fpn.extra_blocks.p6/p7``)
with ``channels`` / ``strides`` declared for the levels ``p3..p7``. Its forward returns an ordered dict
``{"0": P3, "1": P4, "2": P5, "p6": P6, "p7": P7}`` of ``[B, fpn_channels, H/s, W/s]`` maps (ceil sizes).

``extra``:

* ``"p6p7_relu"``: torchvision's ``LastLevelP6P7`` (RetinaNet): P6 = conv3x3/2(P5 output), P7 = conv3x3/2(ReLU(P6)).
* ``"p6p7"``: mmdet's FPN with ``add_extra_convs="on_output"`` and ``relu_before_extra_convs=False`` (GFL): same
  convs, no ReLU before P7.

``depth`` 18 / 34 / 50 / 101 picks the torchvision ResNet (``weights=None``: nothing is downloaded); ``width`` < 1
scales every stage's channels (``narrow_resnet``: the CPU-sized light variants; 1.0 is torchvision's model exactly).
``freeze_stages(trunk, n)`` and ``set_norm_eval`` give mmdet's ``frozen_stages`` and ``norm_eval``.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.models.resnet import ResNet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7

LEVELS = ("p3", "p4", "p5", "p6", "p7")
STRIDES = (8, 16, 32, 64, 128)
RESNETS = {18: resnet18, 34: resnet34, 50: resnet50, 101: resnet101}


class LastLevelP6P7NoReLU(ExtraFPNBlock):
    """mmdet FPN extra convs on the P5 output (``on_output``), without the ReLU torchvision puts before P7."""

    def __init__(self, channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)
        for m in (self.p6, self.p7):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = self.p6(results[-1])
        p7 = self.p7(p6)
        return [*results, p6, p7], [*names, "p6", "p7"]


def narrow_resnet(depth: int, width: float = 1.0, norm_layer=None) -> ResNet:
    """torchvision's ResNet-``depth`` (random init) with the stem and every stage ``width`` times as wide.

    ``width`` 1.0 returns torchvision's model untouched. Otherwise the stem and ``layer1..4`` are rebuilt with
    torchvision's own ``_make_layer`` at ``round(64 * width) * 2**i`` planes and initialised as torchvision does
    (Kaiming normal, fan-out, for convs; BN weight 1, bias 0); the key layout is unchanged."""
    if depth not in RESNETS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNETS)}, got {depth}")
    if not 0 < width <= 1:
        raise ValueError(f"ResNet width must be in (0, 1], got {width}")
    trunk = RESNETS[depth](weights=None, norm_layer=norm_layer)
    if width == 1:
        return trunk
    block = type(trunk.layer1[0])
    planes = max(8, int(round(64 * width)))
    trunk.inplanes = planes
    trunk.conv1 = nn.Conv2d(3, planes, kernel_size=7, stride=2, padding=3, bias=False)
    trunk.bn1 = trunk._norm_layer(planes)
    for i in range(1, 5):
        n = len(getattr(trunk, f"layer{i}"))
        setattr(trunk, f"layer{i}", trunk._make_layer(block, planes * 2 ** (i - 1), n, stride=1 if i == 1 else 2))
    trunk.fc = nn.Linear(trunk.inplanes, trunk.fc.out_features)
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return trunk


def resnet_fpn(depth: int = 50, fpn_channels: int = 256, extra: str = "p6p7_relu", width: float = 1.0) -> BackboneWithFPN:
    trunk = narrow_resnet(depth, width)
    c2 = trunk.inplanes // 8  # 64 (BasicBlock) or 256 (Bottleneck): channels of layer1
    in_channels = [c2 * 2, c2 * 4, c2 * 8]  # layer2..4
    if extra == "p6p7_relu":
        block = LastLevelP6P7(fpn_channels, fpn_channels)
    elif extra == "p6p7":
        block = LastLevelP6P7NoReLU(fpn_channels)
    else:
        raise ValueError(f"unknown FPN extra levels {extra!r}; choose p6p7_relu (torchvision) or p6p7 (mmdet)")
    model = BackboneWithFPN(trunk, {"layer2": "0", "layer3": "1", "layer4": "2"}, in_channels, fpn_channels,
                            extra_blocks=block)
    model.channels = {lvl: fpn_channels for lvl in LEVELS}
    model.strides = dict(zip(LEVELS, STRIDES))
    return model


def freeze_stages(trunk: nn.Module, n: int) -> None:
    """mmdet ``frozen_stages=n``: no gradient for the stem conv1/bn1 and layer1..layer n (n <= 0: nothing)."""
    if n <= 0:
        return
    for name in ["conv1", "bn1"] + [f"layer{i}" for i in range(1, n + 1)]:
        for p in getattr(trunk, name).parameters():
            p.requires_grad_(False)


def set_norm_eval(module: nn.Module) -> None:
    """Put every BatchNorm in ``module`` in eval mode (mmdet ``norm_eval``: running statistics stay fixed)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def levels_of(fpn_out: dict) -> dict[str, Tensor]:
    """Rename ``BackboneWithFPN`` outputs to ``p3..p7``."""
    return dict(zip(LEVELS, fpn_out.values()))

