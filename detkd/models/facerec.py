"""Face recognizers: MobileFaceNet, IResNet-18/50/100 and the margin softmax heads (METHODS.md §5.2, §5.4).

Conventions
- Input: ``float32 [B, 3, S, S]`` RGB in 0..255 (S = ``input_size``, 112 for the paper networks). Every model
  normalises inside: ``(x - 127.5) * 0.0078125`` (the MXNet ``fmobilefacenet`` / ``fresnet`` convention).
- ``FaceRecognizer.forward(images, labels=None, margin=None) -> EmbedOutput`` with
  ``embedding [B, D]`` raw (un-normalised), ``logits [B, K]`` and ``losses={"task.cls": CE}`` iff ``labels`` is
  given and the model has a head (``num_classes > 0``), ``feats`` named maps ``[B, C, h, w]``:
  MobileFaceNet ``"stage2"`` (28×28×64 at 112 input), ``"stage3"`` (14×14×128), ``"stage4"`` (7×7×128),
  ``"conv_6sep"`` (7×7×512); IResNet ``"stage1"`` … ``"stage4"`` (56/28/14/7 at 112 input, 64/128/256/512 ch
  × width) and ``"conv_6sep"`` (the output BN of the trunk, same shape as ``"stage4"``).
  ``model.channels`` maps each tap name to its channel count (declared, no dummy forward).
- The IResNet body keeps the module names of insightface ``arcface_torch/backbones/iresnet.py`` (``conv1``,
  ``bn1``, ``prelu``, ``layer1..4``, ``bn2``, ``dropout``, ``fc``, ``features``), so its ``backbone.pth``
  loads into ``model.backbone`` unchanged. BN eps is 1e-5 there (arcface_torch), 1e-3 in the MobileFaceNet
  conv blocks and 2e-5 in the final BN of both (γ fixed to 1).
- Margin heads keep the class centres ``weight [K, D]`` (N(0, 0.01) init) and return logits
  ``s·cos θ`` with the target column replaced (ArcFace ``s·cos(θ + m)``, CosFace ``s·(cos θ − m)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkd.registry import register
from detkd.structures import EmbedOutput

INPUT_MEAN = 127.5
INPUT_SCALE = 0.0078125  # 1/128
COS_EPS = 1e-7


@dataclass
class FaceModelConfig:
    """Face recognizer config; ``build_model(cfg)`` calls the builder named ``name``."""

    name: str = "mobilefacenet"  # mobilefacenet | iresnet18 | iresnet50 | iresnet100
    embedding_dim: int = 512
    num_classes: int = 0  # 0 = no classification head (embedding only)
    head: Literal["arcface", "cosface"] = "arcface"
    s: float = 64.0
    m: float = 0.5
    input_size: int = 112
    width: float = 1.0  # channel multiplier (CPU-sized variants)
    activation: Literal["", "relu", "prelu"] = ""  # "" = family default (MobileFaceNet relu, IResNet prelu)
    dropout: float = 0.0  # before the embedding FC (the fresnet-100 teacher used 0.4)


# ------------------------------------------------------------------------------------------ margin heads


def arcface_target_logit(cos: Tensor, s: float, m: float | Tensor) -> Tensor:
    """``s·cos(arccos(cos) + m)`` with cos clamped to [−1+1e-7, 1−1e-7]; no easy-margin fallback (§5.4)."""
    cos = cos.clamp(-1.0 + COS_EPS, 1.0 - COS_EPS)
    return s * torch.cos(torch.acos(cos) + m)


class _MarginHead(nn.Module):
    """Shared part of the margin heads: normalised class centres and the cosine matrix."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float, m: float):
        super().__init__()
        self.embedding_dim, self.num_classes = embedding_dim, num_classes
        self.s, self.m = float(s), float(m)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))  # [K, D]
        nn.init.normal_(self.weight, 0.0, 0.01)

    def cosine(self, embedding: Tensor) -> Tensor:
        """``cos θ [B, K]`` between the normalised embeddings and the normalised class centres."""
        return F.linear(F.normalize(embedding, dim=1), F.normalize(self.weight, dim=1))

    def set_weight(self, weight: Tensor, freeze: bool = True) -> None:
        """Replace the class centres (e.g. by the teacher's, MarginDistillation) and optionally freeze them."""
        if tuple(weight.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"head weight must have shape {tuple(self.weight.shape)} [num_classes, embedding_dim], "
                f"got {tuple(weight.shape)}"
            )
        with torch.no_grad():
            self.weight.copy_(weight)
        self.weight.requires_grad_(not freeze)

    def _margin(self, m: float | Tensor | None, like: Tensor) -> Tensor | float:
        if m is None:
            return self.m
        if isinstance(m, Tensor):
            if m.dim() == 0:
                return m
            if m.shape != (like.shape[0],):
                raise ValueError(f"per-sample margin must have shape [B]={like.shape[0]}, got {tuple(m.shape)}")
            return m.to(like)
        return float(m)

    def _target_logit(self, cos_t: Tensor, m) -> Tensor:
        raise NotImplementedError

    def forward(self, embedding: Tensor, labels: Tensor, m: float | Tensor | None = None) -> Tensor:
        """Logits ``[B, K]``: ``s·cos θ`` everywhere, the margin applied on each sample's label column.

        ``m``: None (the head's margin), a float, or a per-sample margin tensor ``[B]``.
        """
        cos = self.cosine(embedding)  # [B, K]
        labels = labels.long()
        margin = self._margin(m, cos)
        cos_t = cos.gather(1, labels[:, None]).squeeze(1)  # [B]
        target = self._target_logit(cos_t, margin)  # [B]
        logits = self.s * cos
        return logits.scatter(1, labels[:, None], target[:, None].to(logits.dtype))


class ArcFaceHead(_MarginHead):
    """Additive angular margin: target logit ``s·cos(θ + m)``.

    ``easy_margin=True`` keeps ``s·cos θ`` where ``cos θ ≤ 0`` (insightface's optional fallback); the
    default has no fallback, as in the MarginDistillation reference.
    """

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.5,
                 easy_margin: bool = False):
        super().__init__(embedding_dim, num_classes, s, m)
        self.easy_margin = easy_margin

    def _target_logit(self, cos_t: Tensor, m) -> Tensor:
        phi = arcface_target_logit(cos_t, self.s, m)
        if self.easy_margin:
            phi = torch.where(cos_t > 0, phi, self.s * cos_t)
        return phi


class CosFaceHead(_MarginHead):
    """Additive cosine margin: target logit ``s·(cos θ − m)``."""

    def __init__(self, embedding_dim: int, num_classes: int, s: float = 64.0, m: float = 0.35):
        super().__init__(embedding_dim, num_classes, s, m)

    def _target_logit(self, cos_t: Tensor, m) -> Tensor:
        return self.s * (cos_t - m)


# ------------------------------------------------------------------------------------------ building blocks


def _act(name: str, channels: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "prelu":
        return nn.PReLU(channels)
    raise ValueError(f"unknown activation {name!r} (expected 'relu' or 'prelu')")


def _ch(c: int, width: float) -> int:
    return max(8, int(round(c * width / 8)) * 8) if width != 1.0 else c


def _conv_out(size: int, n_stride2: int) -> int:
    """Spatial size after ``n_stride2`` 3×3 stride-2 pad-1 convolutions."""
    for _ in range(n_stride2):
        size = (size + 2 - 3) // 2 + 1
    return size


def _fixed_gamma_bn(num_features: int, eps: float = 2e-5) -> nn.BatchNorm1d:
    """BN with γ fixed to 1 (MXNet ``fix_gamma=True``): the weight is 1 and excluded from training."""
    bn = nn.BatchNorm1d(num_features, eps=eps)
    nn.init.ones_(bn.weight)
    bn.weight.requires_grad_(False)
    return bn


class ConvBlock(nn.Sequential):
    """conv (bias-free) → BN (eps 1e-3) → activation; ``act=None`` gives the MXNet "Linear" block."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, p: int = 0, groups: int = 1,
                 act: str | None = "relu"):
        layers = [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=False), nn.BatchNorm2d(cout, eps=1e-3)]
        if act is not None:
            layers.append(_act(act, cout))
        super().__init__(*layers)


class DepthWise(nn.Module):
    """MobileFaceNet bottleneck: 1×1 expand → dw 3×3 (stride s) → 1×1 project (linear); identity if ``residual``."""

    def __init__(self, cin: int, cout: int, groups: int, stride: int, residual: bool, act: str):
        super().__init__()
        self.residual = residual
        self.conv = ConvBlock(cin, groups, 1, act=act)
        self.conv_dw = ConvBlock(groups, groups, 3, stride, 1, groups=groups, act=act)
        self.project = ConvBlock(groups, cout, 1, act=None)

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


def _residual_stage(c: int, groups: int, n: int, act: str) -> nn.Sequential:
    return nn.Sequential(*[DepthWise(c, c, groups, 1, True, act) for _ in range(n)])


def _kaiming_init(module: nn.Module) -> None:
    """Xavier gaussian 'out' magnitude 2 == Kaiming-normal fan_out; BN γ=1 β=0; biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------------ MobileFaceNet


class MobileFaceNet(nn.Module):
    """insightface ``fmobilefacenet`` with the GDC output (§5.2). ``forward(x) -> (embedding [B, D], feats)``.

    ``x`` is already normalised. The GDC kernel equals the final map size (7 at 112 input, 4 at 56 or 64).
    """

    fuse_pairs = (("fc", "features"),)  # embedding linear -> BatchNorm1d, for detkd.models.fuse

    def __init__(self, embedding_dim: int = 512, input_size: int = 112, width: float = 1.0,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        c64, c128, c256, c512 = (_ch(c, width) for c in (64, 128, 256, 512))
        a = activation
        self.conv_1 = ConvBlock(3, c64, 3, 2, 1, act=a)
        self.conv_2_dw = ConvBlock(c64, c64, 3, 1, 1, groups=c64, act=a)
        self.dconv_23 = DepthWise(c64, c64, c128, 2, False, a)
        self.res_3 = _residual_stage(c64, c128, 4, a)
        self.dconv_34 = DepthWise(c64, c128, c256, 2, False, a)
        self.res_4 = _residual_stage(c128, c256, 6, a)
        self.dconv_45 = DepthWise(c128, c128, c512, 2, False, a)
        self.res_5 = _residual_stage(c128, c256, 2, a)
        self.conv_6sep = ConvBlock(c128, c512, 1, act=a)
        k = _conv_out(input_size, 4)
        self.conv_6dw = ConvBlock(c512, c512, k, 1, 0, groups=c512, act=None)  # GDC: linear dw k×k
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(c512, embedding_dim)  # pre_fc1, with bias
        self.features = _fixed_gamma_bn(embedding_dim)  # fc1
        self.channels = {"stage2": c64, "stage3": c128, "stage4": c128, "conv_6sep": c512}
        self.final_size = k
        _kaiming_init(self)
        nn.init.ones_(self.features.weight)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x = self.conv_2_dw(self.conv_1(x))
        s2 = self.res_3(self.dconv_23(x))  # [B, 64, S/4, S/4]
        s3 = self.res_4(self.dconv_34(s2))  # [B, 128, S/8, S/8]
        s4 = self.res_5(self.dconv_45(s3))  # [B, 128, S/16, S/16]
        c6 = self.conv_6sep(s4)  # [B, 512, S/16, S/16]
        g = self.conv_6dw(c6).flatten(1)  # [B, 512]
        emb = self.features(self.fc(self.dropout(g)))  # [B, D]
        return emb, {"stage2": s2, "stage3": s3, "stage4": s4, "conv_6sep": c6}


# ------------------------------------------------------------------------------------------ IResNet


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class IBasicBlock(nn.Module):
    """BN → conv3×3 → BN → PReLU → conv3×3 (stride) → BN, plus identity / 1×1-conv-BN shortcut."""

    fuse_pairs = (("conv1", "bn2"), ("conv2", "bn3"))  # conv -> BN pairs for detkd.models.fuse

    def __init__(self, cin: int, cout: int, stride: int, activation: str):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = _act(activation, cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """insightface IResNet (arcface_torch layout). ``forward(x) -> (embedding [B, D], feats)``."""

    fuse_pairs = (("conv1", "bn1"), ("fc", "features"))  # for detkd.models.fuse (bn2 precedes fc: kept)

    def __init__(self, layers: tuple[int, int, int, int], embedding_dim: int = 512, input_size: int = 112,
                 width: float = 1.0, activation: str = "prelu", dropout: float = 0.0):
        super().__init__()
        chans = [_ch(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = _conv3x3(3, chans[0])
        self.bn1 = nn.BatchNorm2d(chans[0], eps=1e-5)
        self.prelu = _act(activation, chans[0])
        cin = chans[0]
        for i, (c, n) in enumerate(zip(chans, layers)):
            blocks = [IBasicBlock(cin, c, 2, activation)] + [IBasicBlock(c, c, 1, activation) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = c
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.final_size = _conv_out(input_size, 4)
        self.fc = nn.Linear(cin * self.final_size**2, embedding_dim)
        self.features = _fixed_gamma_bn(embedding_dim, eps=1e-5)
        self.channels = {f"stage{i + 1}": c for i, c in enumerate(chans)} | {"conv_6sep": cin}
        _kaiming_init(self)
        nn.init.ones_(self.features.weight)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x = self.prelu(self.bn1(self.conv1(x)))
        feats = {}
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            feats[f"stage{i + 1}"] = x  # [B, C_i, S/2^(i+1), S/2^(i+1)]
        x = self.bn2(x)
        feats["conv_6sep"] = x
        emb = self.features(self.fc(self.dropout(x.flatten(1))))  # [B, D]
        return emb, feats


# ------------------------------------------------------------------------------------------ recognizer


class FaceRecognizer(nn.Module):
    """A trunk (MobileFaceNet / IResNet) plus an optional margin head. Return type never depends on mode."""

    def __init__(self, backbone: nn.Module, embedding_dim: int, input_size: int, head: _MarginHead | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.embedding_dim = embedding_dim
        self.input_size = input_size
        self.channels: dict[str, int] = dict(backbone.channels)
        self.num_classes = head.num_classes if head is not None else 0

    def normalize(self, images: Tensor) -> Tensor:
        return (images - INPUT_MEAN) * INPUT_SCALE

    def forward(self, images: Tensor, labels: Tensor | None = None,
                margin: float | Tensor | None = None) -> EmbedOutput:
        """``images [B, 3, S, S]`` RGB 0..255; ``labels [B]`` int64; ``margin`` overrides the head's margin
        (float or per-sample ``[B]``)."""
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (self.input_size,) * 2:
            raise ValueError(
                f"expected images [B, 3, {self.input_size}, {self.input_size}] (model input_size), "
                f"got {tuple(images.shape)}"
            )
        emb, feats = self.backbone(self.normalize(images))
        out = EmbedOutput(embedding=emb, feats=feats)
        if labels is not None and self.head is not None:
            out.logits = self.head(emb, labels, margin)  # [B, K]
            out.losses = {"task.cls": F.cross_entropy(out.logits, labels.long())}
        return out


def _make_head(kind: str, embedding_dim: int, num_classes: int, s: float, m: float) -> _MarginHead | None:
    if num_classes <= 0:
        return None
    if kind == "arcface":
        return ArcFaceHead(embedding_dim, num_classes, s=s, m=m)
    if kind == "cosface":
        return CosFaceHead(embedding_dim, num_classes, s=s, m=m)
    raise ValueError(f"unknown face head {kind!r} (expected 'arcface' or 'cosface')")


def _check_size(input_size: int) -> None:
    if input_size < 16:
        raise ValueError(f"input_size must be at least 16 (four stride-2 stages), got {input_size}")


@register("model", tiny={"input_size": 32, "embedding_dim": 16, "num_classes": 5, "width": 0.25})
def mobilefacenet(*, embedding_dim: int = 512, num_classes: int = 0, head: str = "arcface", s: float = 64.0,
                  m: float = 0.5, input_size: int = 112, width: float = 1.0, activation: str = "",
                  dropout: float = 0.0) -> FaceRecognizer:
    """MobileFaceNet (GDC, ReLU by default), the MarginDistillation student."""
    _check_size(input_size)
    trunk = MobileFaceNet(embedding_dim, input_size, width, activation or "relu", dropout)
    return FaceRecognizer(trunk, embedding_dim, input_size, _make_head(head, embedding_dim, num_classes, s, m))


def _iresnet(layers, *, embedding_dim=512, num_classes=0, head="arcface", s=64.0, m=0.5, input_size=112,
             width=1.0, activation="", dropout=0.0) -> FaceRecognizer:
    _check_size(input_size)
    trunk = IResNet(layers, embedding_dim, input_size, width, activation or "prelu", dropout)
    return FaceRecognizer(trunk, embedding_dim, input_size, _make_head(head, embedding_dim, num_classes, s, m))


@register("model", tiny={"input_size": 32, "embedding_dim": 16, "num_classes": 5, "width": 0.25})
def iresnet18(**kwargs) -> FaceRecognizer:
    """IResNet-18 (layers 2-2-2-2); kwargs as ``FaceModelConfig``."""
    return _iresnet((2, 2, 2, 2), **kwargs)


@register("model", tiny={"input_size": 32, "embedding_dim": 16, "num_classes": 5, "width": 0.25})
def iresnet50(**kwargs) -> FaceRecognizer:
    """IResNet-50 (layers 3-4-14-3)."""
    return _iresnet((3, 4, 14, 3), **kwargs)


@register("model", tiny={"input_size": 32, "embedding_dim": 16, "num_classes": 5, "width": 0.25})
def iresnet100(**kwargs) -> FaceRecognizer:
    """IResNet-100 (layers 3-13-30-3), the MarginDistillation teacher."""
    return _iresnet((3, 13, 30, 3), **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "ArcFaceHead", "CosFaceHead", "FaceModelConfig", "FaceRecognizer", "IResNet", "MobileFaceNet",
    "arcface_target_logit", "count_parameters", "iresnet18", "iresnet50", "iresnet100", "mobilefacenet",
]
