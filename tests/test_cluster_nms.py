"""Score-voting Cluster-DIoU-NMS (METHODS.md §3.8): reference values, greedy equivalence, grouped == full."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms

from detkd.ops.nms import cluster_diou_voting_nms, cluster_keep, diou_beta


def full_matrix_reference(boxes, scores, labels, thr=0.6, beta=0.8, offset=4000.0, max_det=100):
    """§3.8 transcribed step by step on the full [N, N] matrices (the specification)."""
    order = torch.argsort(scores, descending=True, stable=True)
    b, s, lab = boxes[order], scores[order], labels[order]
    sh = b + lab[:, None].to(b.dtype) * offset
    d = diou_beta(sh, sh, beta)
    u = torch.triu(d, diagonal=1)
    x = u
    for _ in range(999):
        a = x
        keep = a.max(0).values <= thr
        x = u * keep[:, None].to(u.dtype)
        if torch.equal(a, x):
            break
    v = torch.triu(d) * keep[:, None].to(d.dtype)
    w = torch.exp(-(1 - v * (v > 0.7)).pow(2) / 0.025) * s[None, :]
    voted = (w @ b) / w.sum(1, keepdim=True)
    idx = keep.nonzero().flatten()[:max_det]
    return voted[idx], s[idx], lab[idx], order[idx]


def test_reference_values_voting():
    b = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30.0]])
    s, lab = torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long)
    assert diou_beta(b, b)[0, 1].item() == pytest.approx(0.804862, abs=1e-6)
    out_b, out_s, out_l, keep = cluster_diou_voting_nms(b, s, lab)
    assert keep.tolist() == [0, 2] and out_s.tolist() == pytest.approx([0.9, 0.7]) and out_l.tolist() == [0, 0]
    assert out_b[0].tolist() == pytest.approx([0.162338, 0.0, 10.162338, 10.0], abs=1e-5)
    assert 0 < out_b[0, 1].item() < 1e-12  # the exp(-40) leak from C, not exactly 0
    assert out_b[1].tolist() == pytest.approx([20, 20, 30, 30], abs=1e-5)


def test_reference_values_chain():
    b = torch.tensor([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10.0]])
    s, lab = torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long)
    d = diou_beta(b, b)
    assert d[0, 1].item() == pytest.approx(0.472454, abs=1e-6) and d[1, 2].item() == pytest.approx(0.472454, abs=1e-6)
    assert d[0, 2].item() == pytest.approx(0.090088, abs=1e-6)
    assert cluster_diou_voting_nms(b, s, lab, iou_threshold=0.6)[3].tolist() == [0, 1, 2]
    assert cluster_diou_voting_nms(b, s, lab, iou_threshold=0.4)[3].tolist() == [0, 2]  # greedy: 3rd survives


def random_boxes(n, classes, seed, size=300.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * 60 + 4
    boxes = torch.cat([xy, xy + wh], 1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("seed,n,classes,thr", [(0, 300, 1, 0.5), (1, 500, 5, 0.6), (2, 800, 20, 0.3), (3, 64, 3, 0.7)])
def test_cluster_fixed_point_equals_greedy_nms(seed, n, classes, thr):
    boxes, scores, labels = random_boxes(n, classes, seed)
    keep = cluster_diou_voting_nms(boxes, scores, labels, iou_threshold=thr, beta=None, max_per_img=10**6)[3]
    expected = batched_nms(boxes, scores, labels, thr)
    assert keep.tolist() == expected.tolist()


def test_cluster_keep_on_the_full_iou_matrix_equals_greedy():
    boxes, scores, labels = random_boxes(400, 1, 7)
    order = torch.argsort(scores, descending=True)
    iou = diou_beta(boxes[order], boxes[order], None)
    keep = cluster_keep(torch.triu(iou, 1), 0.5)
    assert order[keep].tolist() == batched_nms(boxes, scores, labels, 0.5).tolist()


@pytest.mark.parametrize("seed,n,classes", [(0, 200, 1), (1, 600, 7), (2, 1000, 20)])
def test_grouped_computation_equals_the_full_matrix(seed, n, classes):
    boxes, scores, labels = random_boxes(n, classes, seed)
    ours = cluster_diou_voting_nms(boxes, scores, labels)
    ref = full_matrix_reference(boxes, scores, labels)
    assert ours[3].tolist() == ref[3].tolist()
    torch.testing.assert_close(ours[0], ref[0], atol=1e-4, rtol=1e-5)
    assert torch.equal(ours[1], ref[1]) and torch.equal(ours[2], ref[2])


def test_huge_boxes_fall_back_to_the_full_matrix():
    boxes, scores, labels = random_boxes(100, 3, 5, size=6000.0)
    boxes[:, 2:] += 2500  # spans beyond the class offset: classes may interact, as in the reference
    ours = cluster_diou_voting_nms(boxes, scores, labels)
    ref = full_matrix_reference(boxes, scores, labels)
    assert ours[3].tolist() == ref[3].tolist()
    torch.testing.assert_close(ours[0], ref[0], atol=1e-3, rtol=1e-5)


def test_scores_unchanged_max_100_and_empty_input():
    boxes, scores, labels = random_boxes(1000, 3, 11, size=2000.0)
    out_b, out_s, out_l, keep = cluster_diou_voting_nms(boxes, scores, labels)
    assert len(keep) == 100 and torch.equal(out_s, scores[keep]) and torch.equal(out_l, labels[keep])
    assert (out_s[:-1] >= out_s[1:]).all()
    e = cluster_diou_voting_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert all(t.shape[0] == 0 for t in e)


def test_row_chunks_do_not_change_the_result():
    boxes, scores, labels = random_boxes(500, 4, 3)
    a = cluster_diou_voting_nms(boxes, scores, labels, chunk=7)
    b = cluster_diou_voting_nms(boxes, scores, labels)
    assert torch.equal(a[3], b[3]) and torch.equal(a[0], b[0])


def test_negative_threshold_is_refused():
    boxes, scores, labels = random_boxes(5, 1, 0)
    with pytest.raises(ValueError, match="iou_threshold"):
        cluster_diou_voting_nms(boxes, scores, labels, iou_threshold=-0.1)


def test_presets_share_one_signature():
    from detkd.ops.nms import get_nms

    boxes, scores, labels = random_boxes(300, 4, 9)
    g = get_nms("greedy")(boxes, scores, labels, 0.6, 50)
    assert g[3].tolist() == batched_nms(boxes, scores, labels, 0.6)[:50].tolist()
    v = get_nms("cluster-diou-voting")(boxes, scores, labels, 0.6, 50)
    assert len(v[3]) <= 50 and torch.equal(v[1], scores[v[3]])
    with pytest.raises(ValueError, match="known: greedy, cluster-diou-voting"):
        get_nms("soft")


def test_gfl_decodes_with_either_preset():
    from detkd.registry import MODELS, load_all

    load_all()
    torch.manual_seed(0)
    model = MODELS["gfl"](depth=18, num_classes=3, fpn_channels=16, stacked_convs=1, gn_groups=4).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 128, 160) * 255)
        greedy = model.postprocess(out, score_thresh=0.0)[0]
        voted = model.postprocess(out, score_thresh=0.0, nms="cluster-diou-voting")[0]
    assert 0 < len(greedy["scores"]) <= 100 and 0 < len(voted["scores"]) <= 100
    assert torch.isfinite(voted["boxes"]).all()
    assert set(voted) == {"boxes", "scores", "labels"} and (voted["scores"][:-1] >= voted["scores"][1:]).all()
    assert greedy["boxes"].shape != voted["boxes"].shape or not torch.equal(greedy["boxes"], voted["boxes"])
    with pytest.raises(ValueError, match="unknown NMS preset"):
        model.postprocess(out, nms="soft")
