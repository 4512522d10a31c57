"""BatchNorm folding (detkd.models.fuse): fused and unfused eval outputs agree on every registered model."""
import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detkd import registry
from detkd.models.fuse import count_batchnorms, fuse_model
from detkd.structures import DetOutput

# Small instances of every registered model: the registry's tiny configs (RetinaFace-MobileNet with the leaky
# activation of the real checkpoints, and without task convs, is checked on top).
EXTRA = {"retinaface_mnet_leaky": ("retinaface_mnet", {"activation": "leaky0.1"})}


def _cases() -> dict[str, tuple[str, dict]]:
    registry.load_all()
    return {n: (n, registry.TINY_CONFIGS.get(n, {})) for n in sorted(registry.MODELS)} | EXTRA


DET_INPUT = (1, 3, 64, 96)


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that folding is actually exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                n = m.weight.numel()
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                if m.weight.requires_grad:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def _outputs(model, x) -> dict[str, torch.Tensor]:
    out = model(x)
    if isinstance(out, DetOutput):
        res = {f"{k}.{i}": t for k, ts in out.head.items() for i, t in enumerate(ts)} | dict(out.feats)
        if out.rois is not None:  # two-stage: the box head on the proposals (compared when these agree)
            res |= {"rois.proposals": torch.cat(out.rois.proposals), "rois.cls_logits": out.rois.cls_logits,
                    "rois.box_reg": out.rois.box_reg}
        return res
    return {"embedding": out.embedding} | dict(out.feats)


def test_every_registered_model_has_a_tiny_config():
    registry.load_all()
    assert set(registry.MODELS) <= set(registry.TINY_CONFIGS), "register new models with tiny=..."


@pytest.mark.parametrize("case", sorted(_cases()))
def test_fused_equals_unfused(case):
    name, kwargs = _cases()[case]
    torch.manual_seed(0)
    model = _randomise_bn(registry.lookup("model", name)(**kwargs))
    size = kwargs.get("input_size")
    x = torch.rand(2, 3, size, size) * 255 if size else torch.rand(*DET_INPUT) * 255
    n_bn = count_batchnorms(model)
    fused = fuse_model(model)
    assert count_batchnorms(model) == n_bn, "fuse_model(inplace=False) must leave the model untouched"
    if n_bn:  # (VGG trunks have no BatchNorm)
        assert fused.fused > 0 and count_batchnorms(fused) < n_bn
    with torch.no_grad():
        ref, got = _outputs(model, x), _outputs(fused, x)
    assert ref.keys() == got.keys()
    if "rois.proposals" in ref and (ref["rois.proposals"].shape != got["rois.proposals"].shape
                                    or not torch.allclose(ref["rois.proposals"], got["rois.proposals"], atol=1e-3)):
        ref = {k: v for k, v in ref.items() if not k.startswith("rois.")}  # near-tied objectness reordered
    for k in ref:
        scale = max(1.0, ref[k].abs().max().item())
        err = (ref[k] - got[k]).abs().max().item() / scale
        assert err <= 1e-4, f"{case} {k}: max error {err:.2e} (relative to max |value| {scale:.3g})"


def test_what_stays_unfused():
    mnet = fuse_model(registry.lookup("model", "retinaface_mnet")())
    assert count_batchnorms(mnet) == 0  # every BN of RetinaFace-MobileNet follows a conv
    ir = fuse_model(registry.lookup("model", "iresnet18")(input_size=32, width=0.25))
    # the pre-activation bn1 of each block (before a padded conv) and the trunk's bn2 remain
    blocks = sum(1 for m in ir.modules() if type(m).__name__ == "IBasicBlock")
    assert count_batchnorms(ir) == blocks + 1


def test_fuse_twice_and_channels_last():
    torch.manual_seed(1)
    model = _randomise_bn(registry.lookup("model", "retinaface_mnet")(activation="leaky0.1"))
    fused = fuse_model(model, channels_last=True)
    again = fuse_model(fused, inplace=True)
    assert again is fused and fused.fused == model.__dict__.get("fused", 0) + fuse_model(model).fused
    conv = fused.body.stage1[0][0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(*DET_INPUT) * 255
    with torch.no_grad():
        ref, got = _outputs(model, x), _outputs(fused, x)
    for k in ref:
        assert torch.allclose(ref[k], got[k], atol=1e-3, rtol=1e-4), k


def test_bad_declared_pair_is_named():
    class Bad(nn.Module):
        fuse_pairs = (("conv", "bn"),)

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(5)

    with pytest.raises(ValueError, match=r"Bad.fuse_pairs: \('conv', 'bn'\)"):
        fuse_model(Bad())
