"""Face recognizers and margin heads (METHODS.md §5.2, §5.4, §5.9)."""
import math

import pytest
import torch

from detkd.models.facerec import (
    ArcFaceHead, CosFaceHead, FaceModelConfig, arcface_target_logit, count_parameters, iresnet18, iresnet50,
    iresnet100, mobilefacenet,
)
from detkd.registry import build_model
from detkd.structures import EmbedOutput


def test_arcface_target_logit_reference_values():
    cos = torch.tensor([0.5, 0.9, -0.5], dtype=torch.float64)
    got = arcface_target_logit(cos, 64.0, 0.5)
    assert torch.allclose(got, torch.tensor([1.510181, 37.174244, -54.655103], dtype=torch.float64), atol=1e-5)


def test_arcface_clamps_cos_no_nan():
    got = arcface_target_logit(torch.tensor([1.0, -1.0, 1.2]), 64.0, 0.5)
    assert torch.isfinite(got).all()


def _head_with_cos(head, cos_values):
    """Embeddings/weights on axes so that cos(x_0, W_j) = cos_values[j]."""
    k = len(cos_values)
    w = torch.eye(k + 1)[:k]  # [K, K+1] orthonormal centres
    x = torch.zeros(1, k + 1)
    x[0, :k] = torch.tensor(cos_values)
    x[0, k] = math.sqrt(max(0.0, 1 - sum(c * c for c in cos_values)))
    head.set_weight(w)
    return x


def test_arcface_head_logits_and_per_sample_margin():
    head = ArcFaceHead(4, 3, s=64.0, m=0.5)
    x = _head_with_cos(head, [0.5, 0.3, -0.2])
    x2 = x.repeat(2, 1)
    labels = torch.tensor([0, 0])
    logits = head(x2, labels)
    assert logits.shape == (2, 3)
    assert logits[0, 0].item() == pytest.approx(1.510181, abs=1e-4)
    assert logits[0, 1:].tolist() == pytest.approx([64 * 0.3, 64 * -0.2], abs=1e-4)  # s·cos off-target
    per = head(x2, labels, m=torch.tensor([0.5, 0.2]))
    assert per[0, 0].item() == pytest.approx(64 * math.cos(math.acos(0.5) + 0.5), abs=1e-4)
    assert per[1, 0].item() == pytest.approx(64 * math.cos(math.acos(0.5) + 0.2), abs=1e-4)
    with pytest.raises(ValueError, match="per-sample margin"):
        head(x2, labels, m=torch.tensor([0.1, 0.2, 0.3]))


def test_head_weight_frozen_after_set_weight():
    head = ArcFaceHead(8, 5)
    w = torch.randn(5, 8)
    head.set_weight(w, freeze=True)
    assert not head.weight.requires_grad and torch.equal(head.weight.data, w)
    with pytest.raises(ValueError, match="shape"):
        head.set_weight(torch.randn(4, 8))


def test_cosface_and_easy_margin():
    cos_head = CosFaceHead(4, 3, s=30.0, m=0.35)
    x = _head_with_cos(cos_head, [0.6, 0.1, 0.0])
    assert cos_head(x, torch.tensor([0]))[0, 0].item() == pytest.approx(30 * (0.6 - 0.35), abs=1e-4)
    easy = ArcFaceHead(4, 3, easy_margin=True)
    x = _head_with_cos(easy, [-0.3, 0.1, 0.0])
    assert easy(x, torch.tensor([0]))[0, 0].item() == pytest.approx(64 * -0.3, abs=1e-4)


@pytest.mark.parametrize("size", [112, 64, 56])
def test_mobilefacenet_shapes(size):
    torch.manual_seed(0)
    model = mobilefacenet(num_classes=7, input_size=size).eval()
    x = torch.rand(2, 3, size, size) * 255
    out = model(x)
    assert isinstance(out, EmbedOutput)
    assert out.embedding.shape == (2, 512) and out.logits is None and out.losses == {}
    out = model(x, torch.tensor([1, 6]))
    assert out.logits.shape == (2, 7) and set(out.losses) == {"task.cls"}
    final = model.backbone.final_size
    assert final == {112: 7, 64: 4, 56: 4}[size]
    assert out.feats["conv_6sep"].shape == (2, 512, final, final)
    for name, c in model.channels.items():
        assert out.feats[name].shape[1] == c
    assert model.embedding_dim == 512


def test_mobilefacenet_structure_and_parameter_count():
    model = mobilefacenet()
    # 512-d GDC MobileFaceNet trunk (counting the fixed γ of the final BN)
    assert count_parameters(model) == 1_193_472
    assert model.head is None
    assert isinstance(model.backbone.conv_1[2], torch.nn.ReLU)
    assert model.backbone.conv_1[1].eps == 1e-3 and model.backbone.features.eps == 2e-5
    assert not model.backbone.features.weight.requires_grad
    assert model.backbone.conv_6dw[0].kernel_size == (7, 7) and model.backbone.conv_6dw[0].groups == 512
    prelu = mobilefacenet(activation="prelu")
    assert isinstance(prelu.backbone.conv_1[2], torch.nn.PReLU)


def test_input_normalisation_inside_model():
    model = mobilefacenet(input_size=32)
    x = torch.full((1, 3, 32, 32), 127.5)
    assert torch.count_nonzero(model.normalize(x)) == 0
    assert model.normalize(torch.full((1, 1, 1, 1), 255.0)).item() == pytest.approx(127.5 / 128)


def test_wrong_input_size_is_a_clear_error():
    model = mobilefacenet(input_size=64)
    with pytest.raises(ValueError, match="input_size"):
        model(torch.rand(1, 3, 112, 112))


@pytest.mark.parametrize("builder,count", [(iresnet18, 24_025_600), (iresnet50, 43_590_848),
                                           (iresnet100, 65_156_160)])
def test_iresnet_parameter_counts(builder, count):
    assert count_parameters(builder()) == count  # arcface_torch iresnet, 512-d


def test_iresnet_forward_small_width_and_keys():
    torch.manual_seed(0)
    model = iresnet18(num_classes=5, input_size=32, width=0.25, dropout=0.1)
    out = model(torch.rand(2, 3, 32, 32) * 255, torch.tensor([0, 4]))
    assert out.embedding.shape == (2, 512) and out.logits.shape == (2, 5)
    assert [tuple(out.feats[f"stage{i}"].shape[1:]) for i in range(1, 5)] == [
        (16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]
    out.losses["task.cls"].backward()
    assert model.backbone.conv1.weight.grad is not None
    keys = set(model.state_dict())
    for k in ("backbone.layer1.0.bn1.weight", "backbone.layer1.0.prelu.weight", "backbone.layer1.0.downsample.0.weight",
              "backbone.bn2.weight", "backbone.fc.weight", "backbone.features.weight", "head.weight"):
        assert k in keys  # insightface arcface_torch names under "backbone."


def test_registry_and_config():
    cfg = FaceModelConfig(name="mobilefacenet", num_classes=3, input_size=32, head="cosface", m=0.35)
    model = build_model(cfg)
    assert isinstance(model.head, CosFaceHead) and model.num_classes == 3
    with pytest.raises(KeyError, match="iresnet"):
        build_model(FaceModelConfig(name="iresnet101"))


def test_return_type_does_not_depend_on_mode():
    model = mobilefacenet(num_classes=3, input_size=32)
    x, y = torch.rand(2, 3, 32, 32) * 255, torch.tensor([0, 1])
    train_out = model.train()(x, y)
    eval_out = model.eval()(x, y)
    assert set(train_out.losses) == set(eval_out.losses) == {"task.cls"}
    assert set(train_out.feats) == set(eval_out.feats)
