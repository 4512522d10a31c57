"""DeFeat (METHODS.md §4): the fg mask with every quirk, the decoupled neck loss, the head KD (§4.9)."""
from __future__ import annotations

import pytest
import torch

from detkd.distill.losses import decoupled_roi_kd, kd_kl, masked_feat_l2
from detkd.distill.masks import defeat_fg_masks, defeat_gt_level

STRIDES = [4, 8, 16, 32, 64]


def hw_for(h, w):
    return [(-(-h // s), -(-w // s)) for s in STRIDES]


def test_level_assignment_and_cells():
    gts = torch.tensor([[10.0, 20, 100, 60], [0, 0, 300, 300]])
    assert defeat_gt_level(gts, 5).tolist() == [0, 2]  # s 61.08 -> P2; s 301 -> P4
    masks = defeat_fg_masks([gts[:1]], STRIDES, hw_for(400, 400))
    idx = masks[0][0].nonzero()
    assert len(idx) == 230 and idx[:, 0].min() == 5 and idx[:, 0].max() == 14
    assert idx[:, 1].min() == 2 and idx[:, 1].max() == 24
    assert not any(m.any() for m in masks[1:])  # the GT is background on every other level
    masks = defeat_fg_masks([gts[1:]], STRIDES, hw_for(400, 400))
    idx = masks[2][0].nonzero()
    assert len(idx) == 324 and idx.max(0).values.tolist() == [17, 17] and idx.min(0).values.tolist() == [0, 0]


def test_level_boundaries():
    def box(side):
        return torch.tensor([[0.0, 0, side - 1, side - 1]])  # s = side exactly

    assert [defeat_gt_level(box(s), 5).item() for s in (111, 112, 223, 224, 447, 448, 895, 896, 5000)] == [
        0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_single_cell_quirk_and_border_clamp():
    hw = hw_for(64, 64)  # P2 16x16
    wide = torch.tensor([[8.0, 20, 60, 22]])  # one cell tall: ly == ry -> only mask[ly, lx]
    m = defeat_fg_masks([wide], STRIDES, hw)[0][0]
    assert m.nonzero().tolist() == [[5, 2]]
    edge = torch.tensor([[64.0, 10, 66, 30]])  # lx == rx == w = 16 -> clamped to w - 1
    m = defeat_fg_masks([edge], STRIDES, hw)[0][0]
    assert m.nonzero().tolist() == [[2, 15]]
    empty = defeat_fg_masks([torch.zeros(0, 4), wide], STRIDES, hw)
    assert not empty[0][0].any() and empty[0][1].any()


def test_neck_normalisation_identity_and_background_level():
    s = torch.zeros(1, 256, 16, 24)
    t = s.clone()
    mask = torch.zeros(1, 16, 24, dtype=torch.bool)
    mask[0, 5:15, 2:25] = True  # 230 cells
    t[:, :, mask[0]] = 1.0
    assert masked_feat_l2(s, t, mask, denom="defeat").item() == pytest.approx(0.5)
    assert masked_feat_l2(s, t, ~mask, denom="defeat").item() == 0.0
    assert masked_feat_l2(t, t, mask, denom="defeat").item() == 0.0
    t2 = torch.randn(2, 256, 6, 7)
    none = torch.zeros(2, 6, 7, dtype=torch.bool)
    assert masked_feat_l2(s[:1, :, :6, :7].expand(2, -1, -1, -1), t2, ~none, denom="defeat").item() == pytest.approx(
        t2.pow(2).mean().item() / 2, rel=1e-5)  # all-background level: mean of squared diffs / 2
    assert masked_feat_l2(s[:1, :, :6, :7].expand(2, -1, -1, -1), t2, none, denom="defeat").item() == 0.0


def test_roi_head_kd_pos_neg():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(10, 21, generator=g), torch.randn(10, 21, generator=g)
    labels = torch.tensor([0, 3, 0, 0, 7, 1, 0, 0, 0, 20])
    pos, neg = decoupled_roi_kd(s, t, labels, T=1.0)
    q, logp = t.softmax(-1), s.log_softmax(-1)
    kl = (q * (q.log() - logp)).sum(-1)
    assert pos.item() == pytest.approx(kl[labels > 0].mean().item(), rel=1e-5)
    assert neg.item() == pytest.approx(kl[labels == 0].mean().item(), rel=1e-5)
    pos0, neg0 = decoupled_roi_kd(s, t, torch.zeros(10, dtype=torch.long))
    assert pos0.item() == 0.0 and neg0.item() > 0  # empty group -> 0
    assert decoupled_roi_kd(t, t, labels)[0].abs().item() < 1e-6
    p2, _ = decoupled_roi_kd(s, t, labels, T=2.0)
    assert p2.item() == pytest.approx(4 * (
        (t / 2).softmax(-1) * ((t / 2).log_softmax(-1) - (s / 2).log_softmax(-1))).sum(-1)[labels > 0].mean().item(),
        rel=1e-5)


# ------------------------------------------------------------------------ the method on RetinaFace


def test_defeat_terms_weights_and_adapters():
    from _method_e2e import distill_config, shipped_pair

    from detkd.distill.defeat import DeFeatConfig
    from detkd.distill.distiller import build_distill_task

    student, teacher = shipped_pair()
    cfg = distill_config("defeat", DeFeatConfig())
    task = build_distill_task(cfg, student, teacher)
    keys = [t.key for t in task.distiller.terms]
    assert keys == [f"kd.defeat.{g}.{l}" for l in ("p3", "p4", "p5") for g in ("fg", "bg")]
    assert [t.weight for t in task.distiller.terms[:2]] == [1.0, 4.0]  # 3/3 levels, 12/3 levels
    assert len(task.distiller.adapters) == 3  # fg and bg share the level's adapter
    for conv in task.distiller.adapters.values():
        assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3) and conv.bias is not None
        assert conv.weight.abs().max() < 2e-4
    cfg = distill_config("defeat", DeFeatConfig(head="roi"))
    with pytest.raises(ValueError, match="has no roi_forward"):
        build_distill_task(cfg, student, teacher)
    cfg = distill_config("defeat", DeFeatConfig(head="dense"))  # RetinaFace: cls_logits is softmax
    head = build_distill_task(cfg, student, teacher).distiller.terms[-2:]
    assert [t.key for t in head] == ["kd.defeat.head.pos", "kd.defeat.head.neg"]
    assert all(t.loss.func is kd_kl and t.loss.keywords["kind"] == "softmax" and t.weight == 2.0 for t in head)
    del student.head_spec
    with pytest.raises(TypeError, match="declares no `head_spec`"):
        build_distill_task(cfg, student, teacher)


def test_defeat_runs_on_retinaface_synthfaces_with_dense_head(tmp_path):
    from _method_e2e import run_steps

    from detkd.distill.defeat import DeFeatConfig

    task, history, grads = run_steps("defeat", DeFeatConfig(head="dense"), tmp_path / "sf")
    for losses in history:
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
        assert losses["kd.defeat.bg.p3"] > 0 and losses["kd.defeat.head.neg"] > 0
        assert sum(v for k, v in losses.items() if k.startswith("kd.defeat.fg")) > 0
    assert all(sum(g.values()) > 0 for g in grads)


def test_defeat_gt_less_batch_gives_zero_fg_and_finite_loss():
    from _method_e2e import distill_config, shipped_pair

    from detkd.distill.defeat import DeFeatConfig
    from detkd.distill.distiller import build_distill_task

    student, teacher = shipped_pair()
    cfg = distill_config("defeat", DeFeatConfig())
    task = build_distill_task(cfg, student, teacher)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
             "landmarks": torch.zeros(0, 5, 2), "landmarks_valid": torch.zeros(0, dtype=torch.bool)}
    losses = task((torch.rand(2, 3, 96, 96) * 255, [empty, dict(empty)], [{}, {}]))
    assert all(losses[f"kd.defeat.fg.{l}"].item() == 0.0 for l in ("p3", "p4", "p5"))
    assert all(torch.isfinite(v) for v in losses.values()) and losses["kd.defeat.bg.p3"] > 0


# ------------------------------------------------------------- RoI head KD on a toy two-stage model


class ToyTwoStage(torch.nn.Module):
    """A stride-8 map, RoIAlign 4×4, a linear classifier over K+1 classes; the 'sampled RoIs' of an image are its
    GT boxes (labelled) plus two fixed background boxes."""

    def __init__(self, k=3, width=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, stride=8, padding=1)
        self.fc = torch.nn.Linear(width * 16, k + 1)
        self.channels, self.strides = {"p3": width}, {"p3": 8}

    def roi_forward(self, feats, proposals, image_sizes):
        from torchvision.ops import roi_align

        from detkd.structures import RoIOutput

        pooled = roi_align(feats["p3"], proposals, 4, spatial_scale=1 / 8, aligned=True)
        hidden = pooled.flatten(1)
        return RoIOutput(proposals=proposals, rois=proposals, feats=pooled, hidden=hidden,
                         cls_logits=self.fc(hidden), box_reg=hidden.new_zeros(hidden.shape[0], 4))

    def forward(self, images, targets=None, decode=False, image_sizes=None):
        from detkd.structures import DetOutput

        feats = {"p3": torch.relu(self.conv(images / 255))}
        sizes = [tuple(hw) for hw in image_sizes] if image_sizes else [tuple(images.shape[-2:])] * images.shape[0]
        out = DetOutput(feats=feats, image_sizes=sizes)
        if targets is not None:
            bg = torch.tensor([[0.0, 0, 16, 16], [40, 40, 60, 60]])
            rois = [torch.cat([t["boxes"], bg]) for t in targets]
            out.rois = self.roi_forward(feats, rois, sizes)
            out.rois.labels = torch.cat([torch.cat([t["labels"], torch.zeros(2, dtype=torch.long)]) for t in targets])
            out.losses = {"task.cls": torch.nn.functional.cross_entropy(out.rois.cls_logits, out.rois.labels)}
        return out


def test_roi_head_kd_scores_the_students_rois_with_the_teacher():
    from detkd.distill.defeat import DeFeatConfig
    from _method_e2e import distill_config

    from detkd.distill.distiller import build_distill_task

    torch.manual_seed(0)
    student, teacher = ToyTwoStage(), ToyTwoStage()
    cfg = distill_config("defeat", DeFeatConfig(head="roi", student_taps=["p3"], teacher_taps=["p3"]))
    task = build_distill_task(cfg, student, teacher)
    targets = [{"boxes": torch.tensor([[8.0, 8, 40, 48]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[20.0, 4, 60, 30], [2, 30, 30, 62]]), "labels": torch.tensor([1, 3])}]
    images = torch.rand(2, 3, 64, 64) * 255
    losses = task((images, targets, [{}, {}]))
    with torch.no_grad():
        s = student(images, targets)
        t = teacher.roi_forward(teacher(images).feats, s.rois.rois, s.image_sizes)
    pos, neg = decoupled_roi_kd(s.rois.cls_logits, t.cls_logits, s.rois.labels)
    assert losses["kd.defeat.head.pos"].item() == pytest.approx(2 * pos.item(), rel=1e-5)
    assert losses["kd.defeat.head.neg"].item() == pytest.approx(2 * neg.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert student.fc.weight.grad.abs().sum() > 0 and teacher.fc.weight.grad is None


def test_defeat_on_retinanet_p3_p7_when_registered():
    from _method_e2e import distill_config

    from detkd.distill.defeat import DeFeatConfig
    from detkd.distill.distiller import build_distill_task
    from detkd.registry import MODELS, load_all

    load_all()
    torch.manual_seed(0)
    kw = dict(depth=18, num_classes=3, fpn_channels=32)
    student, teacher = MODELS["retinanet"](**kw), MODELS["retinanet"](**kw)
    taps = ["p3", "p4", "p5", "p6", "p7"]
    task = build_distill_task(distill_config("defeat", DeFeatConfig(head="dense", student_taps=taps,
                                                                    teacher_taps=taps)), student, teacher)
    assert task.distiller.terms[-1].loss.keywords["kind"] == "sigmoid"  # RetinaNet: sigmoid class logits
    images = torch.rand(2, 3, 128, 160) * 255
    targets = [{"boxes": torch.tensor([[10.0, 15, 60, 70], [75, 20, 150, 100]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[30.0, 30, 50, 45]]), "labels": torch.tensor([3])}]
    losses = task((images, targets, [{}, {}]))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["kd.defeat.fg.p3"] > 0 and losses["kd.defeat.fg.p7"] == 0 and losses["kd.defeat.bg.p7"] > 0
    sum(losses.values()).backward()
    assert all(a.weight.grad.abs().sum() > 0 for a in task.distiller.adapters.values())


@pytest.mark.slow
def test_defeat_roi_head_on_faster_rcnn_fpn_when_registered():
    from _method_e2e import distill_config

    from detkd.distill.defeat import DeFeatConfig
    from detkd.distill.distiller import build_distill_task
    from detkd.registry import MODELS, load_all

    load_all()
    torch.manual_seed(0)
    student, teacher = MODELS["faster_rcnn_fpn_lite"](num_classes=3), MODELS["faster_rcnn_fpn_lite"](num_classes=3)
    taps = ["p2", "p3", "p4", "p5", "p6"]
    task = build_distill_task(distill_config("defeat", DeFeatConfig(head="roi", student_taps=taps, teacher_taps=taps)),
                              student, teacher)
    targets = [{"boxes": torch.tensor([[20.0, 30, 120, 140], [150, 40, 300, 200]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[60.0, 60, 100, 90]]), "labels": torch.tensor([3])}]
    losses = task((torch.rand(2, 3, 256, 320) * 255, targets, [{}, {}]))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["kd.defeat.head.pos"] > 0 and losses["kd.defeat.head.neg"] > 0 and losses["kd.defeat.fg.p2"] > 0
    sum(losses.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
