"""Faster R-CNN (VGG C4 and ResNet-FPN): the DetOutput contract, anchors, assignment, losses, padding."""
import pytest
import torch

from detkd.models.faster_rcnn import FasterRCNNConfig, faster_rcnn_fpn_lite, faster_rcnn_vgg_lite
from detkd.models.rpn import jwyang_cell_anchors
from detkd.registry import lookup
from detkd.structures import DetOutput, RoIOutput

BUILDERS = {"faster_rcnn_fpn_lite": faster_rcnn_fpn_lite, "faster_rcnn_vgg_lite": faster_rcnn_vgg_lite}


def _targets():
    return [
        {"boxes": torch.tensor([[10.0, 20, 80, 90], [60, 40, 150, 120]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]


def test_jwyang_anchors_match_reference_values():
    # METHODS.md §2.3: the 9 base anchors of faster-rcnn.pytorch (ratio-major, scales 8/16/32, centre 7.5)
    ref = torch.tensor([[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                        [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                        [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]], dtype=torch.float32)
    assert torch.equal(jwyang_cell_anchors([128, 256, 512], [0.5, 1.0, 2.0]), ref)


def test_vgg_priors_are_shifted_jwyang_anchors():
    m = faster_rcnn_vgg_lite(num_classes=2, anchor_sizes=[128, 256, 512])
    out = m(torch.zeros(1, 3, 64, 96))
    (pri,) = out.priors
    assert pri.shape == (4 * 6 * 9, 4)
    cell = jwyang_cell_anchors([128, 256, 512], [0.5, 1.0, 2.0])
    # location (y=1, x=2) holds the 9 base anchors shifted by (32, 16)
    loc = 1 * 6 + 2
    assert torch.equal(pri[loc * 9:(loc + 1) * 9], cell + torch.tensor([32.0, 16, 32, 16]))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_detoutput_complete_in_both_modes(name):
    torch.manual_seed(0)
    m = lookup("model", name)(num_classes=3)
    x = torch.rand(2, 3, 128, 160) * 255
    out = m(x, _targets(), decode=True)
    assert isinstance(out, DetOutput) and isinstance(out.rois, RoIOutput)
    assert set(out.losses) == {"task.rpn_cls", "task.rpn_box", "task.roi_cls", "task.roi_box"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert set(out.head) == set(m.head_spec)
    for key, spec in m.head_spec.items():
        assert all(t.shape[-1] == spec.dim for t in out.head[key])
    # declared taps: channels and strides match the tensors
    assert set(out.feats) == set(m.channels) == set(m.strides)
    for k, f in out.feats.items():
        assert f.shape[1] == m.channels[k]
        assert f.shape[-1] == -(-160 // m.strides[k]) or f.shape[-1] == 160 // m.strides[k]
    assert [p.shape[0] for p in out.priors] == [h.shape[1] for h in out.head["rpn.objectness"]]
    a = out.assign
    p_total = sum(p.shape[0] for p in out.priors)
    assert a.labels.shape == a.pos.shape == a.ignore.shape == a.iou.shape == (2, p_total)
    assert not (a.pos & a.neg).any() and not (a.pos & a.ignore).any()
    assert a.pos[1].sum() == 0 and a.neg[1].sum() > 0  # the empty image has only negatives
    assert (a.labels[a.pos] > 0).all() and (a.matched[a.pos] >= 0).all()
    r = out.rois
    assert r.labels.shape == r.matched.shape == (sum(len(t) for t in r.rois),)
    assert r.cls_logits.shape == (r.labels.numel(), 4) and r.box_reg.shape == (r.labels.numel(), 16)
    assert r.feats.shape[0] == r.hidden.shape[0] == r.labels.numel()
    assert ((r.labels > 0) == (r.matched >= 0)).all()
    assert r.batch_index.tolist() == [0] * len(r.rois[0]) + [1] * len(r.rois[1])
    assert len(out.dets) == 2 and out.image_sizes == [(128, 160)] * 2
    # eval mode, no targets: same structure, no losses, no assignment, rois = proposals
    m.eval()
    ev = m(x)
    assert ev.losses == {} and ev.assign is None and ev.dets is None and ev.rois.labels is None
    assert all(torch.equal(a, b) for a, b in zip(ev.rois.rois, ev.rois.proposals))
    assert set(ev.feats) == set(out.feats) and set(ev.head) == set(out.head)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_roi_forward_reproduces_the_second_stage(name):
    torch.manual_seed(1)
    m = lookup("model", name)(num_classes=2).eval()
    x = torch.rand(1, 3, 96, 128) * 255
    with torch.no_grad():
        out = m(x)
        again = m.roi_forward(out.feats, out.rois.proposals, out.image_sizes)
    assert torch.allclose(again.cls_logits, out.rois.cls_logits) and torch.allclose(again.box_reg, out.rois.box_reg)
    boxes = [torch.tensor([[0.0, 0, 50, 50], [10, 10, 90, 60]])]
    r = m.roi_forward(out.feats, boxes, out.image_sizes)
    assert r.cls_logits.shape[0] == 2 and r.rois is boxes


def test_padding_content_does_not_matter():
    torch.manual_seed(2)
    m = faster_rcnn_fpn_lite(num_classes=2).eval()
    img = torch.rand(1, 3, 100, 120) * 255
    a = torch.zeros(1, 3, 128, 128)
    a[..., :100, :120] = img
    b = torch.rand(1, 3, 128, 128) * 255
    b[..., :100, :120] = img
    with torch.no_grad():
        oa = m(a, image_sizes=[(100, 120)], decode=True)
        ob = m(b, image_sizes=[(100, 120)], decode=True)
    assert torch.equal(oa.feats["p2"], ob.feats["p2"])
    assert torch.equal(oa.dets[0]["boxes"], ob.dets[0]["boxes"])
    assert (oa.dets[0]["boxes"][:, 2] <= 120).all() and (oa.dets[0]["boxes"][:, 3] <= 100).all()


def test_rpn_assignment_thresholds_and_drop_outside():
    m = faster_rcnn_vgg_lite(num_classes=2, anchor_sizes=[32, 64, 128])
    x = torch.zeros(1, 3, 96, 96)
    gt = torch.tensor([[16.0, 16, 60, 60]])
    out = m(x, [{"boxes": gt, "labels": torch.tensor([2])}])
    a = out.assign
    pri = torch.cat(out.priors)
    from torchvision.ops import box_iou

    iou = box_iou(gt, pri)[0]
    assert torch.allclose(a.iou[0], iou)
    inside = (pri[:, 0] >= 0) & (pri[:, 1] >= 0) & (pri[:, 2] < 96) & (pri[:, 3] < 96)
    assert a.ignore[0][~inside].all()  # jwyang: border-crossing anchors enter no loss
    positive = a.labels[0] > 0
    best_inside = iou[inside].max()
    assert positive.any() and (iou[positive] >= 0.7).logical_or(iou[positive] == best_inside).all()
    assert (a.labels[0][positive] == 2).all()
    between = inside & (iou >= 0.3) & (iou < 0.7) & (iou != best_inside)
    assert a.ignore[0][between].all()
    # torchvision style (FPN): no border filtering
    f = faster_rcnn_fpn_lite(num_classes=2)
    fo = f(torch.zeros(1, 3, 96, 96), [{"boxes": gt, "labels": torch.tensor([1])}])
    fpri = torch.cat(fo.priors)
    fin = (fpri[:, 0] >= 0) & (fpri[:, 1] >= 0) & (fpri[:, 2] < 96) & (fpri[:, 3] < 96)
    low = box_iou(gt, fpri)[0] < 0.3
    assert not fo.assign.ignore[0][~fin & low].any()


def test_empty_and_degenerate_targets_train_without_nan():
    torch.manual_seed(3)
    m = faster_rcnn_fpn_lite(num_classes=2)
    x = torch.rand(2, 3, 96, 96) * 255
    t = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
         {"boxes": torch.tensor([[30.0, 30, 30, 70]]), "labels": torch.tensor([1])}]  # zero width: dropped
    out = m(x, t)
    loss = sum(out.losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert out.losses["task.rpn_box"] == 0 and out.losses["task.roi_box"] == 0
    assert (out.rois.labels == 0).all()


def test_label_outside_class_range_is_a_clear_error():
    m = faster_rcnn_vgg_lite(num_classes=2)
    with pytest.raises(ValueError, match=r"target 0: label 5 outside 1..2"):
        m(torch.zeros(1, 3, 64, 64), [{"boxes": torch.tensor([[1.0, 1, 30, 30]]), "labels": torch.tensor([5])}])


def test_training_reduces_the_loss_on_one_image():
    torch.manual_seed(4)
    m = faster_rcnn_fpn_lite(num_classes=2, rpn_batch=64, roi_batch=64)
    x = torch.rand(1, 3, 96, 96) * 100
    x[..., 20:70, 30:80] += 150
    t = [{"boxes": torch.tensor([[30.0, 20, 80, 70]]), "labels": torch.tensor([2])}]
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    first = None
    for _ in range(12):
        loss = sum(m(x, t).losses.values())
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(sum(m(x, t).losses.values()).detach()) < 0.7 * first


def test_family_defaults():
    v, f = FasterRCNNConfig.vgg(), FasterRCNNConfig.fpn()
    assert v.normalize == "caffe" and v.rpn_drop_outside and v.roi_batch == 256 and v.nms_thresh == 0.3
    assert f.normalize == "imagenet" and f.anchor_sizes == [32, 64, 128, 256, 512] and f.roi_batch == 512
    m = lookup("model", "faster_rcnn_vgg")(depth=11, num_classes=20, hidden=64)
    # the RPN's shared conv output is a tap too (TDKD's teacher task feature on Faster R-CNN)
    assert m.channels == {"c5": 512, "rpn_feat.c5": 512} and m.strides == {"c5": 16, "rpn_feat.c5": 16}
    frozen = [n for n, p in m.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("backbone.") and int(n.split(".")[1]) < 10 for n in frozen)


def test_autocast_keeps_anchors_and_losses_in_float32():
    torch.manual_seed(5)
    m = faster_rcnn_vgg_lite(num_classes=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.rand(2, 3, 96, 128) * 255, _targets(), decode=True)
    assert all(p.dtype == torch.float32 for p in out.priors)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.losses.values())
    assert out.rois.proposals[0].dtype == torch.float32
