"""GFL math against METHODS.md §3.9 (QFL, DFL, integral) and the ATSS assigner (§3.2, §3.4)."""
import math

import pytest
import torch

from detkd.ops.assign import atss_assign
from detkd.ops.gfl import bbox2distance, distance2bbox, distribution_focal_loss, integral, quality_focal_loss


def bins(**values):
    z = torch.zeros(17)
    for k, v in values.items():
        z[int(k[1:])] = v
    return z


def test_integral_expected_distance():
    z = bins(b3=2.0, b4=1.0)
    d = integral(z.repeat(4)[None], 16)  # [1, 4]
    assert d.shape == (1, 4)
    assert torch.allclose(d, torch.full((1, 4), 6.453902), atol=1e-5)
    # zero logits: uniform over 0..16 -> 8
    assert torch.allclose(integral(torch.zeros(2, 68), 16), torch.full((2, 4), 8.0))


def test_dfl_numbers():
    t = torch.tensor([3.4])
    assert distribution_focal_loss(torch.zeros(1, 17), t).item() == pytest.approx(math.log(17), abs=1e-5)
    assert distribution_focal_loss(bins(b3=2.0, b4=1.0)[None], t).item() == pytest.approx(1.623160, abs=1e-5)
    # mmdet's left weight floor(y)+1-y: at integer y the loss is CE at floor(y) alone (= log 17 for zero logits)
    assert distribution_focal_loss(torch.zeros(1, 17), torch.tensor([3.0])).item() == pytest.approx(math.log(17), abs=1e-5)
    # a peaked distribution at the target bin has a small loss
    assert distribution_focal_loss(bins(b5=20.0)[None], torch.tensor([5.0])).item() < 1e-6


def test_qfl_numbers():
    z = torch.tensor([[0.0, 1.0, -1.0]])
    pos = quality_focal_loss(z, torch.tensor([1]), torch.tensor([0.8]))
    neg = quality_focal_loss(z, torch.tensor([3]), torch.tensor([0.0]))
    assert pos.item() == pytest.approx(0.198384, abs=1e-5)
    assert neg.item() == pytest.approx(0.897813, abs=1e-5)
    # label -1 is a negative too; rows are independent
    both = quality_focal_loss(z.repeat(2, 1), torch.tensor([1, -1]), torch.tensor([0.8, 0.0]))
    assert torch.allclose(both, torch.cat([pos, neg]))


def test_distance_box_roundtrip_and_clamp():
    pts = torch.tensor([[10.0, 10.0], [5.0, 5.0]])
    boxes = torch.tensor([[4.0, 6.0, 13.0, 30.0], [6.0, 6.0, 8.0, 8.0]])
    d = bbox2distance(pts, boxes)
    assert torch.allclose(distance2bbox(pts, d), boxes)
    dc = bbox2distance(pts, boxes, max_dis=16)
    assert dc.max().item() == pytest.approx(15.9) and dc.min().item() == 0.0  # centre outside box 2 -> clamped
    assert distance2bbox(pts, d, max_shape=(20, 12))[0].tolist() == [4.0, 6.0, 12.0, 20.0]


def grid_anchors(strides=(8, 16), size=64, scale=4):
    out, sizes = [], []
    for s in strides:
        n = size // s
        ys, xs = torch.meshgrid(torch.arange(n) * s, torch.arange(n) * s, indexing="ij")
        c = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float()
        out.append(torch.cat([c - scale * s / 2, c + scale * s / 2], 1))
        sizes.append(n * n)
    return torch.cat(out), sizes


def brute_atss(anchors, sizes, gt, topk):
    """Straightforward per-GT loops of the ATSS rule (the specification the vectorised version is tested against)."""
    from torchvision.ops import box_iou
    iou = box_iou(anchors, gt)
    ac = (anchors[:, :2] + anchors[:, 2:]) / 2
    best = torch.full((anchors.shape[0],), -1.0)
    owner = torch.full((anchors.shape[0],), -1)
    thrs = []
    for g in range(gt.shape[0]):
        gc = (gt[g, :2] + gt[g, 2:]) / 2
        d = ((ac - gc) ** 2).sum(1).sqrt()
        cand, start = [], 0
        for n in sizes:
            cand += (d[start:start + n].argsort(stable=True)[:min(topk, n)] + start).tolist()
            start += n
        vals = iou[cand, g]
        thr = vals.mean() + vals.std()
        thrs.append(thr)
        for a in cand:
            inside = min(ac[a, 0] - gt[g, 0], ac[a, 1] - gt[g, 1], gt[g, 2] - ac[a, 0], gt[g, 3] - ac[a, 1]) > 0.01
            if iou[a, g] >= thr and inside and iou[a, g] > best[a]:
                best[a], owner[a] = iou[a, g], g
    return owner, torch.stack(thrs)


def test_atss_matches_brute_force_and_returns_thresholds():
    anchors, sizes = grid_anchors()
    gt = torch.tensor([[3.0, 5.0, 40.0, 37.0], [20.0, 18.0, 60.0, 62.0], [30.0, 2.0, 37.0, 11.0]])
    m = atss_assign(anchors, sizes, gt, topk=9)
    owner, thr = brute_atss(anchors, sizes, gt, 9)
    assert torch.allclose(m.thresholds, thr, atol=1e-6)
    assert torch.equal(m.matched, owner)
    assert torch.equal(m.pos, owner >= 0) and m.pos.any()
    from torchvision.ops import box_iou
    assert torch.allclose(m.iou, box_iou(anchors, gt).max(1).values)
    # thresholds are mean + unbiased std of the 9 + 9 candidate IoUs (topk <= level size)
    assert m.thresholds.shape == (3,)


def test_atss_empty_and_valid_mask():
    anchors, sizes = grid_anchors()
    m = atss_assign(anchors, sizes, torch.zeros(0, 4))
    assert not m.pos.any() and (m.matched == -1).all() and m.thresholds.numel() == 0
    gt = torch.tensor([[3.0, 5.0, 40.0, 37.0]])
    valid = torch.ones(anchors.shape[0], dtype=torch.bool)
    valid[:8] = False  # first row of the stride-8 level
    mv = atss_assign(anchors, sizes, gt, valid=valid)
    assert not mv.pos[:8].any()
    sub = valid.nonzero().squeeze(1)
    ref = atss_assign(anchors[sub], [sizes[0] - 8, sizes[1]], gt)
    assert torch.equal(mv.matched[sub], ref.matched) and torch.allclose(mv.thresholds, ref.thresholds)
    with pytest.raises(ValueError, match="level sizes"):
        atss_assign(anchors, [1, 2], gt)
