"""The dense-detector skeleton (detkd.models.dense) and the assigners (detkd.ops.assign)."""
import pytest
import torch
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou

from detkd.models.dense import check_image_sizes, flatten_level
from detkd.models.retinaface import retinaface_mnet
from detkd.ops.assign import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, max_iou_match
from detkd.ops.boxes import cxcywh_to_xyxy
from detkd.ops.priors import PriorCache, make_priors


def test_flatten_level_order_is_row_major_then_anchor():
    b, a, k, h, w = 2, 3, 4, 2, 5
    x = torch.arange(b * a * k * h * w, dtype=torch.float32).reshape(b, a * k, h, w)
    y = flatten_level(x, k)  # [B, H*W*A, K]
    assert y.shape == (b, h * w * a, k)
    i, j, anchor = 1, 3, 2
    row = (i * w + j) * a + anchor
    assert torch.equal(y[1, row], x[1, anchor * k:(anchor + 1) * k, i, j])


def test_image_sizes_default_and_validation():
    images = torch.zeros(2, 3, 64, 96)
    assert check_image_sizes(images, None) == [(64, 96), (64, 96)]
    assert check_image_sizes(images, [(64, 80), torch.tensor([50, 96])]) == [(64, 80), (50, 96)]
    with pytest.raises(ValueError, match="2 images"):
        check_image_sizes(images, [(64, 96)])
    with pytest.raises(ValueError, match=r"image_sizes\[1\].*64x96"):
        check_image_sizes(images, [(64, 96), (65, 96)])


def test_forward_carries_image_sizes_and_postprocess_thresholds():
    torch.manual_seed(0)
    model = retinaface_mnet().eval()
    images = torch.rand(2, 3, 64, 64) * 255
    out = model(images, image_sizes=[(64, 48), (40, 64)])
    assert out.image_sizes == [(64, 48), (40, 64)]
    assert model(images).image_sizes == [(64, 64), (64, 64)]
    loose = model.postprocess(out, score_thresh=0.0)
    strict = model.postprocess(out, score_thresh=0.9, nms_thresh=None)  # None keeps the default
    assert all(s["scores"].numel() <= l["scores"].numel() for s, l in zip(strict, loose))
    assert all((d["scores"] > 0.9).all() for d in strict)
    with pytest.raises(TypeError, match="conf_thresh.*known: score_thresh"):
        model.postprocess(out, conf_thresh=0.5)


def test_prior_cache_xyxy_and_cxcywh_round_trip():
    cache = PriorCache([[16, 32], [64]], [8, 16])
    xyxy = cache.xyxy(40, 24)
    assert xyxy is cache.xyxy(40, 24)
    ref = make_priors(40, 24, [[16, 32], [64]], [8, 16])
    for got, r in zip(xyxy, ref):
        assert torch.equal(got, cxcywh_to_xyxy(r))
    back = cache.cxcywh_of(xyxy)
    assert all(a is b for a, b in zip(back, cache(40, 24)))  # the cached originals, not a conversion
    converted = cache.cxcywh_of([p.clone() for p in xyxy])  # unknown list: converted
    assert all(torch.equal(a, b) for a, b in zip(converted, ref))


def test_max_iou_match_follows_torchvision_matcher():
    torch.manual_seed(0)
    xy = torch.rand(40, 2) * 50
    priors = torch.cat([xy, xy + 10 + torch.rand(40, 2) * 20], 1)  # [P, 4]
    gt = torch.tensor([[5.0, 5.0, 25.0, 30.0], [30.0, 10.0, 60.0, 45.0], [0.0, 0.0, 2.0, 2.0]])
    for allow in (False, True):
        m = max_iou_match(gt, priors, 0.5, 0.4, allow)
        ref = Matcher(0.5, 0.4, allow)(box_iou(gt, priors))
        assert torch.equal(m.matched, ref)
        assert torch.equal(m.iou, box_iou(gt, priors).max(0).values)
    m = max_iou_match(gt, priors, 0.5, 0.4, False)
    iou = box_iou(gt, priors).max(0).values
    assert torch.equal(m.pos, iou >= 0.5)
    assert torch.equal(m.neg, iou < 0.4)
    assert torch.equal(m.matched == BETWEEN_THRESHOLDS, (iou >= 0.4) & (iou < 0.5))
    # low-quality matches: the tiny GT 2 gets its best prior even though its IoU is far below 0.5
    best = box_iou(gt, priors)[2].argmax()
    assert max_iou_match(gt, priors, 0.5, 0.4, True).matched[best] >= 0
    empty = max_iou_match(torch.zeros(0, 4), priors, 0.5, 0.4)
    assert (empty.matched == BELOW_LOW_THRESHOLD).all() and (empty.iou == 0).all()


def test_retinaface_declares_head_spec_and_reports_xyxy_priors():
    from detkd.ops.priors import level_priors

    model = retinaface_mnet()
    spec = model.head_spec
    assert (spec["cls_logits"].kind, spec["cls_logits"].dim, spec["cls_logits"].num_classes) == ("softmax", 2, 1)
    assert (spec["box_reg"].kind, spec["box_reg"].encoding) == ("deltas", "ssd")
    assert spec["landmarks"].dim == 10
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 96))
    first = out.priors[0][:2]  # location (0, 0), sizes 16 and 32: centre (4, 4)
    assert first.tolist() == [[-4.0, -4.0, 12.0, 12.0], [-12.0, -12.0, 20.0, 20.0]]
    cxcywh = model.priors_cxcywh(out)
    assert torch.equal(cxcywh[: out.priors[0].shape[0]], level_priors(8, 12, 8, [16, 32]))
