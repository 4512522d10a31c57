"""Priors, box coders, RetinaFace matching, hard-negative mining and "+1" NMS."""
import math

import numpy as np
import pytest
import torch

from detkd.ops.boxes import (
    box_iou_plus1,
    cxcywh_to_xyxy,
    decode_boxes,
    decode_landmarks,
    encode_boxes,
    encode_landmarks,
)
from detkd.ops.assign import background_ce, retinaface_hard_negatives, retinaface_match
from detkd.ops.nms import nms_plus1, nms_plus1_reference
from detkd.ops.priors import PriorCache, make_priors

MIN_SIZES = [[16, 32], [64, 128], [256, 512]]
STEPS = [8, 16, 32]


def loop_priors(h, w):
    """The reference PriorBox loop, normalised, then scaled to pixels."""
    out = []
    for k, step in enumerate(STEPS):
        fh, fw = math.ceil(h / step), math.ceil(w / step)
        for i in range(fh):
            for j in range(fw):
                for m in MIN_SIZES[k]:
                    out.append([(j + 0.5) * step / w * w, (i + 0.5) * step / h * h, m / w * w, m / h * h])
    return torch.tensor(out)


# ------------------------------------------------------------------------------------------------ priors


def test_prior_count_640():
    pri = make_priors(640, 640, MIN_SIZES, STEPS)
    assert [p.shape[0] for p in pri] == [12800, 3200, 800]
    assert sum(p.shape[0] for p in pri) == 16800
    allp = torch.cat(pri)
    assert allp[12799].tolist() == [636.0, 636.0, 32.0, 32.0]  # last prior of level 1
    assert allp[12800].tolist() == [8.0, 8.0, 64.0, 64.0]  # first prior of level 2


@pytest.mark.parametrize("h,w", [(683, 1024), (70, 100), (33, 17)])
def test_priors_non_square_match_reference_loop(h, w):
    pri = torch.cat(make_priors(h, w, MIN_SIZES, STEPS))
    ref = loop_priors(h, w)
    assert pri.shape == ref.shape
    assert torch.allclose(pri, ref, atol=1e-3)
    n = sum(2 * math.ceil(h / s) * math.ceil(w / s) for s in STEPS)
    assert pri.shape[0] == n


def test_prior_cache_reuses_tensors_per_size():
    cache = PriorCache(MIN_SIZES, STEPS)
    a, b, c = cache(64, 96), cache(64, 96), cache(96, 64)
    assert a is b and a is not c
    assert a[0].shape[0] == 2 * 8 * 12 and c[0].shape[0] == 2 * 12 * 8


# ------------------------------------------------------------------------------------------------ coders


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    priors = torch.cat([torch.rand(50, 2, generator=g) * 600, 16 + torch.rand(50, 2, generator=g) * 200], 1)
    xy = torch.rand(50, 2, generator=g) * 500
    boxes = torch.cat([xy, xy + 5 + torch.rand(50, 2, generator=g) * 300], 1)
    var = (0.1, 0.2)
    t = encode_boxes(boxes, priors, var)
    assert torch.allclose(decode_boxes(t, priors, var), boxes, atol=1e-3)
    lms = torch.rand(50, 5, 2, generator=g) * 600
    tl = encode_landmarks(lms, priors, var)
    assert tl.shape == (50, 10)
    assert torch.allclose(decode_landmarks(tl, priors, var), lms, atol=1e-3)


def test_encode_matches_formula_and_degenerate_box_is_finite():
    prior = torch.tensor([[50.0, 40.0, 20.0, 10.0]])
    box = torch.tensor([[45.0, 38.0, 65.0, 48.0]])  # centre (55, 43), size 20 x 10
    t = encode_boxes(box, prior, (0.1, 0.2))
    assert torch.allclose(t, torch.tensor([[5 / 2.0, 3 / 1.0, 0.0, 0.0]]))
    flat = encode_boxes(torch.tensor([[10.0, 10.0, 10.0, 20.0]]), prior, (0.1, 0.2))  # w = 0 (exists in WIDER)
    assert torch.isfinite(flat).all()


def test_box_iou_plus1():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # 10 x 10 pixels
    b = torch.tensor([[5.0, 0.0, 14.0, 9.0], [10.0, 0.0, 19.0, 9.0]])  # 50 px overlap; touching
    iou = box_iou_plus1(a, b)
    assert iou[0, 0].item() == pytest.approx(50 / 150)
    assert iou[0, 1].item() == 0.0


# ---------------------------------------------------------------------------------------------- matching


def priors_640_xyxy():
    pri = torch.cat(make_priors(640, 640, MIN_SIZES, STEPS))
    return pri, cxcywh_to_xyxy(pri)


def test_gt_equal_to_anchor_is_forced_positive():
    pri, pxy = priors_640_xyxy()
    k = 12800 + 40 * 2 * 10 + 2 * 7 + 1  # level 2, row 10, col 7, second size (128 px)
    m = retinaface_match(pxy[k : k + 1].clone(), pxy)
    assert m.pos[k] and m.matched[k] == 0 and m.iou[k] == pytest.approx(1.0)


def test_forced_match_between_0_2_and_0_35():
    pri, pxy = priors_640_xyxy()
    gt = torch.tensor([[100.0, 100.0, 126.0, 300.0]])  # tall thin box: best IoU ~0.2..0.35
    from torchvision.ops import box_iou

    best_iou, best = box_iou(gt, pxy).max(1)
    assert 0.2 <= best_iou.item() < 0.35
    m = retinaface_match(gt, pxy)
    assert m.pos.sum() == 1 and m.pos[best.item()] and m.matched[best.item()] == 0


def test_hard_gt_alone_makes_image_background():
    _, pxy = priors_640_xyxy()
    gt = torch.tensor([[10.0, 10.0, 13.0, 13.0]])  # 3 px face: best IoU < 0.2
    m = retinaface_match(gt, pxy)
    assert not m.pos.any() and (m.matched == -1).all()
    assert m.iou.max() < 0.2


def test_hard_gt_not_forced_but_takes_over_its_best_prior():
    _, pxy = priors_640_xyxy()
    from torchvision.ops import box_iou

    big = torch.tensor([[200.0, 200.0, 264.0, 264.0]])
    tiny = torch.tensor([[230.0, 230.0, 233.0, 233.0]])  # inside `big`, best IoU < 0.2
    gts = torch.cat([big, tiny])
    best_tiny = box_iou(tiny, pxy).argmax().item()
    m = retinaface_match(gts, pxy)
    assert m.pos.any()
    assert m.matched[best_tiny] == 1  # re-assigned to the hard GT (reference loop over all GTs)
    # positive only if its overlap with its original best GT reaches 0.35 (never forced to 2)
    assert bool(m.pos[best_tiny]) == bool(m.iou[best_tiny] >= 0.35)


def test_shared_best_prior_goes_to_last_gt():
    _, pxy = priors_640_xyxy()
    a = torch.tensor([[100.0, 100.0, 116.0, 116.0]])
    b = torch.tensor([[100.5, 100.5, 116.5, 116.5]])
    from torchvision.ops import box_iou

    assert box_iou(a, pxy).argmax() == box_iou(b, pxy).argmax()
    m = retinaface_match(torch.cat([a, b]), pxy)
    assert m.matched[box_iou(a, pxy).argmax()] == 1


def test_image_without_gt():
    _, pxy = priors_640_xyxy()
    m = retinaface_match(torch.zeros(0, 4), pxy)
    assert not m.pos.any() and (m.matched == -1).all() and (m.iou == 0).all()


# ------------------------------------------------------------------------------------------------ mining


def test_hard_negative_mining_counts_and_ranking():
    g = torch.Generator().manual_seed(0)
    b, p = 3, 500
    logits = torch.randn(b, p, 2, generator=g) * 3
    pos = torch.zeros(b, p, dtype=torch.bool)
    pos[0, :5] = True  # 5 positives -> 35 negatives
    pos[1, :100] = True  # 7 * 100 > P - 1 -> capped: every non-positive
    neg, rank = retinaface_hard_negatives(logits, pos, 7)
    assert neg[0].sum() == 35 and neg[1].sum() == 400 and neg[2].sum() == 0
    assert not (neg & pos).any()
    for i in range(b):
        assert sorted(rank[i].tolist()) == list(range(p))  # a permutation
        assert (rank[i][pos[i]] >= p - pos[i].sum()).all()  # positives rank last
    loss = background_ce(logits)
    # the negatives are the hardest (highest background CE) non-positives
    assert loss[0][neg[0]].min() >= loss[0][~pos[0] & ~neg[0]].max()
    # distill negatives: a subset of the mined ones
    distill = rank < (3 * pos.sum(1, keepdim=True)).clamp(max=p - 1)
    assert (distill & ~pos).sum(1).tolist() == [15, 300, 0]
    assert not (distill & ~pos & ~neg).any()


def test_background_ce_uses_global_max_and_is_exact():
    logits = torch.tensor([[[30.0, 0.0], [0.0, 2.0]], [[-3.0, 1.0], [5.0, 5.0]]])
    ce = background_ce(logits)
    expected = torch.logsumexp(logits, -1) - logits[..., 0]
    assert torch.allclose(ce, expected, atol=1e-5)
    assert ce[0, 1].item() == pytest.approx(math.log(1 + math.exp(2)), abs=1e-5)


# -------------------------------------------------------------------------------------------------- NMS


def random_boxes(n, seed, integer=True):
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 60, size=(n, 2)) if integer else rng.uniform(0, 60, size=(n, 2))
    wh = rng.integers(0, 30, size=(n, 2)) if integer else rng.uniform(0, 30, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    boxes[n // 2 : n // 2 + 5] = boxes[:5]  # exact duplicates
    scores = rng.integers(0, 8, size=n).astype(np.float32) / 8  # many equal scores
    return boxes, scores


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("thr", [0.3, 0.4, 0.5])
def test_nms_plus1_matches_reference_with_ties(seed, thr):
    boxes, scores = random_boxes(120, seed)
    keep = nms_plus1(torch.from_numpy(boxes), torch.from_numpy(scores), thr).tolist()
    assert keep == nms_plus1_reference(boxes, scores, thr)


@pytest.mark.parametrize("seed", range(3))
def test_nms_plus1_matches_reference_float_boxes(seed):
    boxes, scores = random_boxes(300, 100 + seed, integer=False)
    scores = scores + np.random.default_rng(seed).uniform(0, 0.01, size=scores.shape).astype(np.float32)
    keep = nms_plus1(torch.from_numpy(boxes), torch.from_numpy(scores), 0.4).tolist()
    assert keep == nms_plus1_reference(boxes, scores, 0.4)


def test_nms_iou_exactly_at_threshold_is_kept():
    # +1 areas: 10x10 = 100 each, overlap 5x10... choose IoU = 2/5 exactly: inter 40, union 100
    a = [0.0, 0.0, 9.0, 9.0]  # 100 px
    b = [0.0, 0.0, 9.0, 3.0]  # 40 px, fully inside: IoU = 40 / 100 = 0.4
    boxes = torch.tensor([a, b])
    scores = torch.tensor([0.9, 0.8])
    assert nms_plus1(boxes, scores, 0.4).tolist() == [0, 1]  # IoU == thr: kept (suppress iff >)
    assert nms_plus1(boxes, scores, 0.39).tolist() == [0]
    assert nms_plus1_reference(boxes.numpy(), scores.numpy(), 0.4) == [0, 1]


def test_nms_plus1_differs_from_continuous_iou():
    # touching boxes (x2 == x1'): continuous IoU 0, "+1" IoU > 0
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    # +1 IoU = (1 * 11) / (121 + 121 - 11) = 0.0476
    assert nms_plus1(boxes, scores, 0.04).tolist() == [0]
    assert nms_plus1(boxes, scores, 0.05).tolist() == [0, 1]
    from torchvision.ops import nms

    assert nms(boxes, scores, 0.04).tolist() == [0, 1]


def test_nms_empty_and_score_tie_order():
    assert nms_plus1(torch.zeros(0, 4), torch.zeros(0), 0.4).numel() == 0
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    # equal scores: argsort()[::-1] visits the higher index first
    assert nms_plus1(boxes, torch.tensor([0.5, 0.5]), 0.4).tolist() == [1]


def py_cpu_nms_float32(dets, thresh):
    """biubug6 ``py_cpu_nms`` on float32 dets (stable argsort so equal scores have a defined order)."""
    x1, y1, x2, y2, scores = (dets[:, i] for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort(kind="stable")[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(np.float32(0.0), xx2 - xx1 + np.float32(1))
        h = np.maximum(np.float32(0.0), yy2 - yy1 + np.float32(1))
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= np.float32(thresh))[0] + 1]
    return keep


@pytest.mark.parametrize("seed", range(4))
def test_nms_plus1_matches_float32_py_cpu_nms_on_integer_boxes(seed):
    boxes, scores = random_boxes(150, 50 + seed)
    dets = np.concatenate([boxes, scores[:, None]], 1).astype(np.float32)
    for thr in (0.3, 0.4):
        assert nms_plus1(torch.from_numpy(boxes), torch.from_numpy(scores), thr).tolist() == py_cpu_nms_float32(dets, thr)
