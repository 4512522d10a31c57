"""The output contract (docs/contracts.md), checked on EVERY registered model.

Each registered model is built with its tiny config (``@register("model", tiny={...})``,
``detkd.registry.TINY_CONFIGS``). A model that declares ``head_spec`` is a detector and must return a complete
``DetOutput`` in train and eval mode (losses iff targets, dets iff decode, declared channels / strides /
head_spec matching the tensors, xyxy priors whose counts match the head, image_sizes carried through); any
other model is a face recognizer and must return an ``EmbedOutput``. The test toy ``ToySigmoidDet`` (K
sigmoid columns) runs through the same checks.
"""
from __future__ import annotations

import math

import pytest
import torch

from detkd.registry import MODELS, TINY_CONFIGS, load_all
from detkd.structures import HEAD_KINDS, Assignment, DetOutput, EmbedOutput, RoIOutput
from tests._toy_dense import ToySigmoidDet

load_all()
H, W = 64, 96  # padded batch size (multiple of 32, not square)
IMAGE_SIZES = [(64, 96), (50, 80)]  # the second image is padded bottom/right


def detection_targets(num_classes: int) -> list[dict]:
    lms = torch.tensor([[[8.0, 10.0], [16, 10], [12, 14], [9, 18], [15, 18]]])
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 20.0, 22.0], [30.0, 10.0, 62.0, 44.0]]),
         "labels": torch.tensor([1, num_classes]),
         "landmarks": torch.cat([lms, lms + 26]), "landmarks_valid": torch.tensor([True, False])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
         "landmarks": torch.zeros(0, 5, 2), "landmarks_valid": torch.zeros(0, dtype=torch.bool)},
    ]


def build(name: str):
    if name not in TINY_CONFIGS:
        pytest.fail(f"model {name!r} has no tiny config: register it with @register('model', tiny={{...}}) "
                    "(docs/contracts.md, 'Adding a model family')")
    torch.manual_seed(0)
    return MODELS[name](**TINY_CONFIGS[name])


def num_classes(model) -> int:
    if isinstance(getattr(model, "num_classes", None), int):  # two-stage: the classes live in the RoI head
        return model.num_classes
    for spec in model.head_spec.values():
        if spec.kind in ("softmax", "sigmoid"):
            return spec.num_classes
    pytest.fail(f"{type(model).__name__}.head_spec declares no classification key (softmax or sigmoid)")


def check_detector(model) -> None:
    """Every clause of the DetOutput contract, in train and eval mode."""
    for key in ("channels", "strides", "head_spec", "thresholds"):
        assert isinstance(getattr(model, key, None), dict), f"{type(model).__name__} declares no `{key}` dict"
    assert set(model.channels) == set(model.strides), "channels and strides must name the same taps"
    for key, spec in model.head_spec.items():
        assert spec.kind in HEAD_KINDS, key
    k = num_classes(model)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, H, W, generator=g) * 255
    for mode in ("train", "eval"):
        model.train(mode == "train")
        targets = detection_targets(k)
        out = model(images, targets, decode=True, image_sizes=IMAGE_SIZES)
        assert type(out) is DetOutput
        assert out.image_sizes == IMAGE_SIZES
        # taps: exactly the declared ones, with the declared channels and strides
        assert set(out.feats) == set(model.channels), f"feats {sorted(out.feats)} != declared {sorted(model.channels)}"
        for tap, f in out.feats.items():
            s = model.strides[tap]
            assert f.shape == (2, model.channels[tap], math.ceil(H / s), math.ceil(W / s)), (tap, tuple(f.shape))
        # head: exactly the declared keys, one tensor per level, counts matching the priors
        assert set(out.head) == set(model.head_spec)
        levels = len(out.priors)
        assert levels >= 1
        for key, spec in model.head_spec.items():
            assert len(out.head[key]) == levels, key
            for t, p in zip(out.head[key], out.priors):
                assert t.shape == (2, p.shape[0], spec.dim), (key, tuple(t.shape), tuple(p.shape))
        # xyxy input pixels: positive size, centres on the padded image (>= 0: torchvision's RetinaNet and
        # mmdet's GFL centre their first anchors at x = y = 0)
        for p in out.priors:
            assert p.ndim == 2 and p.shape[1] == 4 and p.dtype == torch.float32
            assert (p[:, 2] > p[:, 0]).all() and (p[:, 3] > p[:, 1]).all()
            cx, cy = (p[:, 0] + p[:, 2]) / 2, (p[:, 1] + p[:, 3]) / 2
            assert (cx >= 0).all() and (cx < W + 128).all() and (cy >= 0).all() and (cy < H + 128).all()
        # assignment and losses iff targets
        a = out.assign
        n = sum(p.shape[0] for p in out.priors)
        assert isinstance(a, Assignment)
        for name in ("labels", "matched", "pos", "neg", "ignore", "iou"):
            assert getattr(a, name).shape == (2, n), name
        assert a.pos.dtype == a.neg.dtype == a.ignore.dtype == torch.bool
        assert a.pos[0].any() and not a.pos[1].any()  # image 1 has no GT
        assert out.losses and all(key.startswith("task.") for key in out.losses)
        assert out.raw_losses
        for key, v in out.losses.items():
            assert v.ndim == 0 and torch.isfinite(v), key
        if hasattr(model, "roi_forward"):  # two-stage: the RoIOutput of the sampled RoIs, labels iff targets
            r = out.rois
            assert isinstance(r, RoIOutput) and len(r.proposals) == len(r.rois) == 2
            n_rois = sum(x.shape[0] for x in r.rois)
            assert r.labels.shape == r.matched.shape == (n_rois,) and r.cls_logits.shape == (n_rois, k + 1)
            assert r.feats.shape[0] == r.hidden.shape[0] == r.box_reg.shape[0] == n_rois
        # dets iff decode
        assert len(out.dets) == 2
        for d in out.dets:
            m = d["boxes"].shape[0]
            assert d["boxes"].shape == (m, 4) and d["scores"].shape == (m,) and d["labels"].shape == (m,)
            assert d["labels"].dtype == torch.int64 and (m == 0 or int(d["labels"].min()) >= 1)
        if mode == "train":
            sum(out.losses.values()).backward()
            assert any(p.grad is not None for p in model.parameters())
            model.zero_grad()
        with torch.no_grad():
            plain = model(images)
        assert type(plain) is DetOutput
        assert plain.assign is None and plain.losses == {} and plain.raw_losses == {} and plain.dets is None
        assert plain.image_sizes == [(H, W), (H, W)]  # default: the full padded size
        dets = model.postprocess(plain, **model.thresholds)
        assert len(dets) == 2


def check_recognizer(model) -> None:
    size = model.input_size
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    for mode in ("train", "eval"):
        model.train(mode == "train")
        out = model(images, torch.tensor([0, 1]))
        assert type(out) is EmbedOutput and out.embedding.shape == (2, model.embedding_dim)
        assert out.losses and out.logits is not None
        assert set(model.channels) <= set(out.feats)
        for tap, c in model.channels.items():
            assert out.feats[tap].shape[1] == c, tap
        plain = model(images)
        assert type(plain) is EmbedOutput and plain.losses == {} and plain.logits is None


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registered_model_fills_the_contract(name):
    model = build(name)
    if hasattr(model, "head_spec"):
        check_detector(model)
    else:
        size = getattr(model, "input_size", 32)
        with torch.no_grad():
            out = model.eval()(torch.zeros(2, 3, size, size))
        assert not isinstance(out, DetOutput), f"{name} returns a DetOutput but declares no head_spec"
        check_recognizer(model)


@pytest.mark.parametrize("task_convs", [False, True])
def test_toy_sigmoid_detector_fills_the_contract(task_convs):
    torch.manual_seed(0)
    check_detector(ToySigmoidDet(num_classes=3, task_convs=task_convs))


def test_every_registered_model_has_a_tiny_config():
    assert sorted(MODELS) == sorted(TINY_CONFIGS)
