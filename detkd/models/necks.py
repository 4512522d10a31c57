"""RetinaFace necks: the biubug6 FPN and SSH context modules (METHODS.md §1.2, EVAL.md §4.2).

Module names are the checkpoint's (``output1/2/3``, ``merge1/2``, ``conv3X3``, ``conv5X5_1``, ``conv5X5_2``,
``conv7X7_2``, ``conv7x7_3`` with its lower-case x). ``act`` is the activation of the FPN convs and of the two
activated SSH convs; the reference uses LeakyReLU(0.1) there iff out_channels <= 64 in the leaky variant, which
the model decides (``RetinaFace``). The SSH output always ends in a plain ReLU after the concat.

FPN: ``[C1 (s8), C2 (s16), C3 (s32)] -> [64 (s8), 64 (s16), 64 (s32)]`` (out_channels = 64 by default);
top-down with nearest resize to the exact lateral size. SSH: ``[B, C, h, w] -> [B, C, h, w]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkd.models.backbones import conv_bn


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int = 64, act: str = "relu"):
        super().__init__()
        self.output1 = conv_bn(in_channels[0], out_channels, 1, act, kernel=1)
        self.output2 = conv_bn(in_channels[1], out_channels, 1, act, kernel=1)
        self.output3 = conv_bn(in_channels[2], out_channels, 1, act, kernel=1)
        self.merge1 = conv_bn(out_channels, out_channels, 1, act)
        self.merge2 = conv_bn(out_channels, out_channels, 1, act)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        o1 = self.output1(feats[0])  # [B, C, H/8, W/8]
        o2 = self.output2(feats[1])  # [B, C, H/16, W/16]
        o3 = self.output3(feats[2])  # [B, C, H/32, W/32]
        o2 = self.merge2(o2 + F.interpolate(o3, size=o2.shape[-2:], mode="nearest"))
        o1 = self.merge1(o1 + F.interpolate(o2, size=o1.shape[-2:], mode="nearest"))
        return [o1, o2, o3]


class SSH(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, act: str = "relu"):
        super().__init__()
        if out_channels % 4:
            raise ValueError(f"SSH out_channels must be a multiple of 4, got {out_channels}")
        half, quarter = out_channels // 2, out_channels // 4
        self.conv3X3 = conv_bn(in_channels, half, 1, None)
        self.conv5X5_1 = conv_bn(in_channels, quarter, 1, act)
        self.conv5X5_2 = conv_bn(quarter, quarter, 1, None)
        self.conv7X7_2 = conv_bn(quarter, quarter, 1, act)
        self.conv7x7_3 = conv_bn(quarter, quarter, 1, None)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.conv3X3(x)  # [B, C/2, h, w]
        m5 = self.conv5X5_1(x)  # [B, C/4, h, w]
        b5 = self.conv5X5_2(m5)
        b7 = self.conv7x7_3(self.conv7X7_2(m5))
        return F.relu(torch.cat([b3, b5, b7], dim=1))  # [B, C, h, w]
