"""Inference-time folding of BatchNorm into the preceding convolution / linear layer.

``fuse_model(model)`` returns an eval-mode copy in which every BatchNorm whose input is exactly the output of a
conv (or linear) layer is folded into that layer's weight and bias (``torch.nn.utils.fusion``) and replaced by
``nn.Identity``. The folded layer computes ``bn(conv(x))`` with the BN's running statistics, so outputs match the
unfused eval model up to float rounding (about 1e-6 relative).

Which pairs are folded:

* in every ``nn.Sequential`` (and torchvision's ``IntermediateLayerGetter``, also a chain), a ``Conv{1,2,3}d`` /
  ``Linear`` immediately followed by a ``BatchNorm`` of the same width (``conv_bn``, ``conv_dw``, MobileFaceNet
  ``ConvBlock``, the ResNet stem and downsample blocks, ...);
* in torchvision's ResNet ``BasicBlock`` / ``Bottleneck``: ``conv_i`` -> ``bn_i`` (``BatchNorm2d`` or the
  ``FrozenBatchNorm2d`` of torchvision's detection backbones);
* in modules that declare ``fuse_pairs = (("conv1", "bn2"), ...)``: attribute pairs whose BN consumes the
  conv's output and nothing else (a model declares them where its ``forward`` is not a plain chain, e.g. the
  IResNet block or an embedding ``fc`` -> ``features`` BatchNorm1d).

A BN that *precedes* a padded conv (IResNet's pre-activation ``bn1``) cannot be folded exactly and is kept.
Activations stay separate modules: eager PyTorch on CPU has no conv + LeakyReLU kernel to fuse into, and ONNX
Runtime fuses conv + activation itself when it optimises the exported graph.

``channels_last=True`` also converts the parameters to ``torch.channels_last`` (NHWC) memory format; inputs
then run through the NHWC convolution kernels. The fused model is for inference only: calling ``.train()``
on it does not bring the BatchNorms back (``model.fused`` records the number of folded pairs).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights, fuse_linear_bn_eval
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import BasicBlock, Bottleneck

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ALL_BNS = _BNS + (FrozenBatchNorm2d,)
# Containers whose forward feeds each child's output to the next child (and nowhere else before it).
_CHAINS = (nn.Sequential, IntermediateLayerGetter)
# Pairs of torchvision classes we cannot annotate with ``fuse_pairs``.
_FOREIGN_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}


def _fold_frozen(layer: nn.Module, bn: FrozenBatchNorm2d) -> nn.Module | None:
    """``layer`` followed by torchvision's ``FrozenBatchNorm2d`` (its statistics are buffers), folded."""
    if not isinstance(layer, _CONVS) or layer.out_channels != bn.weight.numel():
        return None
    fused = copy.deepcopy(layer)
    w, b = fuse_conv_bn_weights(layer.weight, layer.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    fused.weight, fused.bias = w, b
    return fused


def _fold(layer: nn.Module, bn: nn.Module) -> nn.Module | None:
    """The folded layer, or ``None`` when ``(layer, bn)`` is not a foldable pair."""
    if isinstance(bn, FrozenBatchNorm2d):
        return _fold_frozen(layer, bn)
    if not isinstance(bn, _BNS) or not bn.track_running_stats or bn.running_mean is None:
        return None
    if isinstance(layer, _CONVS) and layer.out_channels == bn.num_features:
        return fuse_conv_bn_eval(layer, bn)
    if isinstance(layer, nn.Linear) and layer.out_features == bn.num_features:
        return fuse_linear_bn_eval(layer, bn)
    return None


def _fuse_chain(seq: nn.Module) -> int:
    names = list(seq._modules)
    n = 0
    for a, b in zip(names, names[1:]):
        folded = _fold(seq._modules[a], seq._modules[b])
        if folded is not None:
            seq._modules[a] = folded
            seq._modules[b] = nn.Identity()
            n += 1
    return n


def _fuse_declared(module: nn.Module) -> int:
    n = 0
    pairs = getattr(type(module), "fuse_pairs", None) or _FOREIGN_PAIRS.get(type(module), ())
    for layer_name, bn_name in pairs:
        layer, bn = getattr(module, layer_name, None), getattr(module, bn_name, None)
        if layer is None or bn is None or isinstance(bn, nn.Identity):
            continue
        folded = _fold(layer, bn)
        if folded is None:
            raise ValueError(f"{type(module).__name__}.fuse_pairs: ({layer_name!r}, {bn_name!r}) is not a "
                             f"conv/linear -> BatchNorm pair of matching width")
        setattr(module, layer_name, folded)
        setattr(module, bn_name, nn.Identity())
        n += 1
    return n


@torch.no_grad()
def fuse_model(model: nn.Module, *, channels_last: bool = False, inplace: bool = False) -> nn.Module:
    """An eval-mode model with BatchNorm folded into the preceding conv / linear layers (see module docstring).

    ``inplace=False`` (default) leaves ``model`` untouched and fuses a deep copy. Fusing twice is a no-op.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    n = 0
    for module in list(model.modules()):
        if isinstance(module, _CHAINS):
            n += _fuse_chain(module)
        n += _fuse_declared(module)
    for p in model.parameters():
        p.requires_grad_(False)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.fused = getattr(model, "fused", 0) + n
    return model


def count_batchnorms(model: nn.Module) -> int:
    """BatchNorm modules (incl. torchvision's ``FrozenBatchNorm2d``) left in ``model`` (after fusion: only those
    that cannot be folded)."""
    return sum(isinstance(m, _ALL_BNS) for m in model.modules())
