"""LD (METHODS.md §3.3, §3.4, §3.7, §3.9): KD rows, weighted LD terms, the VLR selection."""
from __future__ import annotations

import math

import pytest
import torch
from _method_e2e import distill_config
from torch import nn
from torchvision.ops import box_iou

from detkd.distill.distiller import DistillContext, build_distill_task
from detkd.distill.ld import LDConfig
from detkd.distill.losses import kd_rows, weighted_kd
from detkd.distill.masks import atss_thresholds, vlr_diou, vlr_weights
from detkd.structures import Assignment, DetOutput, HeadKey


def test_kd_row_reference_values():
    z = torch.zeros(17)
    t = torch.zeros(17)
    t[3] = 10
    assert kd_rows(z, t, 10.0).item() == pytest.approx(0.287843, abs=1e-6)
    k = torch.arange(17.0)
    assert kd_rows(0.5 * k, 0.5 * (16 - k), 10.0).item() == pytest.approx(0.697497, abs=1e-6)
    assert kd_rows(0.5 * k, 0.5 * (16 - k), 1.0).item() == pytest.approx(0.380116, abs=1e-6)
    s, t = torch.zeros(80), torch.zeros(80)
    s[5], t[5] = 4, 8
    assert kd_rows(s, t, 2.0).item() == pytest.approx(0.0190687, abs=1e-7)


def test_identity_is_zero_up_to_float32():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 30, 68, generator=g) * 5
    w = torch.rand(2, 30, generator=g)
    assert abs(weighted_kd(x, x.clone(), w, 10.0, bins=17, denom=4).item()) < 1.3e-6 * 4 * 60
    c = torch.randn(2, 30, 80, generator=g)
    assert abs(weighted_kd(c, c.clone(), w, 2.0).item()) < 1e-5


def test_main_ld_is_not_normalised_by_positives():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 4, 68, generator=g), torch.randn(1, 4, 68, generator=g)
    w = torch.tensor([[0.7, 0.0, 0.0, 0.0]])
    one = weighted_kd(s, t, w, 10.0, bins=17, denom=4)
    s2, t2 = s.clone(), t.clone()
    s2[0, 1], t2[0, 1] = s[0, 0], t[0, 0]
    two = weighted_kd(s2, t2, torch.tensor([[0.7, 0.7, 0.0, 0.0]]), 10.0, bins=17, denom=4)
    assert two.item() == pytest.approx(2 * one.item(), rel=1e-6)
    # the sum over the 4 edges of ω · kd_row, / 4
    rows = kd_rows(s[0, 0].view(4, 17), t[0, 0].view(4, 17), 10.0)
    assert one.item() == pytest.approx(0.7 * rows.sum().item() / 4, rel=1e-6)


def test_empty_selection_gives_a_zero_that_keeps_the_graph():
    s = torch.randn(2, 5, 68, requires_grad=True)
    out = weighted_kd(s, torch.randn(2, 5, 68), torch.zeros(2, 5), 10.0, bins=17, denom=4)
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(s.grad, torch.zeros_like(s))
    with pytest.raises(ValueError, match="weight shape"):
        weighted_kd(s, s.detach(), torch.zeros(2, 4), 10.0)
    with pytest.raises(ValueError, match="multiple of 17"):
        weighted_kd(s[..., :60], s[..., :60].detach(), torch.zeros(2, 5), 10.0, bins=17)


# ------------------------------------------------------------------------------------------- VLR


def square_priors(h, w, stride, size_factor=8):
    """One square prior per location, size 8·stride, centre (x·s, y·s) (mmdet v2, centre offset 0)."""
    ys, xs = torch.meshgrid(torch.arange(h) * stride, torch.arange(w) * stride, indexing="ij")
    c = torch.stack([xs, ys], -1).reshape(-1, 2).float()
    half = size_factor * stride / 2
    return torch.cat([c - half, c + half], 1)


def brute_vlr(level_priors, gts, alpha=0.25, faithful=True):
    """Per-anchor loops, written straight from §3.4 (float64)."""
    def iou(a, b, iof=False):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        area_a = (a[2] - a[0]) * (a[3] - a[1])
        area_b = (b[2] - b[0]) * (b[3] - b[1])
        return inter / (area_a if iof else area_a + area_b - inter)

    def diou(a, b):
        rho2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2
        c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2
        return iou(a, b, iof=faithful) - rho2 / c2

    levels = [p.double().tolist() for p in level_priors]
    thr = []
    for g in gts.double().tolist():
        cand = []
        for pri in levels:
            gc = ((g[0] + g[2]) / 2, (g[1] + g[3]) / 2)
            centres = [((p[0] + p[2]) / 2, (p[1] + p[3]) / 2) for p in pri]
            d = sorted(range(len(pri)), key=lambda i: math.dist(gc, centres[i]))
            cand += [iou(pri[i], g) for i in d[:9]]
        m = sum(cand) / len(cand)
        thr.append(m + math.sqrt(sum((c - m) ** 2 for c in cand) / (len(cand) - 1)))
    out = []
    for a in [p for pri in levels for p in pri]:
        best = 0.0
        for g, t in zip(gts.double().tolist(), thr):
            if alpha * t <= diou(a, g) < t:
                best = max(best, iou(a, g))
        out.append(best)
    return torch.tensor(out, dtype=torch.float64), torch.tensor(thr, dtype=torch.float64)


@pytest.mark.parametrize("faithful", [True, False])
def test_vlr_matches_a_per_anchor_transcription(faithful):
    levels = [square_priors(12, 12, 8), square_priors(6, 6, 16), square_priors(3, 3, 32)]
    gts = torch.tensor([[10.0, 12, 50, 60], [40, 30, 90, 80], [5, 60, 30, 85]])
    ours = vlr_weights(levels, gts, faithful=faithful)
    ref, thr = brute_vlr(levels, gts, faithful=faithful)
    torch.testing.assert_close(atss_thresholds(levels, gts).double(), thr, atol=1e-5, rtol=1e-5)
    assert ((ours > 0) == (ref > 0)).all()
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)
    assert (ours > 0).sum() > 5


def test_faithful_and_clean_differ_where_iof_and_iou_differ():
    levels = [square_priors(12, 12, 8)]
    gts = torch.tensor([[10.0, 12, 70, 80]])
    a = vlr_weights(levels, gts, faithful=True)
    b = vlr_weights(levels, gts, faithful=False)
    assert not torch.equal(a > 0, b > 0)
    small_inside = torch.tensor([[30.0, 30, 34, 34]])
    d_f = vlr_diou(small_inside, gts, faithful=True)
    d_c = vlr_diou(small_inside, gts, faithful=False)
    assert d_f.item() > 0.9 and d_c.item() < 0.01  # IoF = 1 inside the GT, IoU tiny


def test_conflicts_take_the_highest_iou_gt_and_given_thresholds():
    levels = [square_priors(12, 12, 8)]
    gts = torch.tensor([[10.0, 10, 60, 60], [14, 14, 62, 62]])
    thr = torch.tensor([0.9, 0.9])
    w = vlr_weights(levels, gts, thresholds=thr)
    iou = box_iou(levels[0], gts)
    d = vlr_diou(levels[0], gts)
    both = ((d >= 0.225) & (d < 0.9)).all(1)
    assert both.any()
    torch.testing.assert_close(w[both], iou[both].max(1).values)


def test_gt_less_image_and_non_positive_threshold_give_an_empty_vlr():
    levels = [square_priors(4, 4, 8)]
    assert not vlr_weights(levels, torch.zeros(0, 4)).any()
    assert not vlr_weights(levels, torch.tensor([[0.0, 0, 20, 20]]), thresholds=torch.tensor([0.0])).any()


# -------------------------------------------------------------- the method on a distribution head


class ToyGFL(nn.Module):
    """A two-level dense detector with GFL's outputs: K sigmoid logits and a 4·(reg_max+1) distribution per
    square prior (size 8·stride, centre (x·s, y·s)); positives = IoU ≥ 0.3 with a GT."""

    def __init__(self, k=3, reg_max=16, width=8, strides=(8, 16)):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=strides[0], padding=1)
        self.down = nn.Conv2d(width, width, 3, stride=strides[1] // strides[0], padding=1)
        self.cls = nn.Conv2d(width, k, 3, padding=1)
        self.reg = nn.Conv2d(width, 4 * (reg_max + 1), 3, padding=1)
        self.levels = ("p3", "p4")
        self.channels = {lvl: width for lvl in self.levels}
        self.strides = dict(zip(self.levels, strides))
        self.head_spec = {"cls_logits": HeadKey("sigmoid", k),
                          "box_dist": HeadKey("distribution", 4 * (reg_max + 1), "ltrb", reg_max)}

    def forward(self, images, targets=None, decode=False, image_sizes=None):
        p3 = torch.relu(self.stem(images / 255))
        feats = {"p3": p3, "p4": torch.relu(self.down(p3))}
        head = {"cls_logits": [], "box_dist": []}
        priors = []
        for lvl in self.levels:
            f = feats[lvl]
            head["cls_logits"].append(self.cls(f).flatten(2).transpose(1, 2))
            head["box_dist"].append(self.reg(f).flatten(2).transpose(1, 2))
            h, w, s = f.shape[-2], f.shape[-1], self.strides[lvl]
            ys, xs = torch.meshgrid(torch.arange(h) * s, torch.arange(w) * s, indexing="ij")
            c = torch.stack([xs, ys], -1).reshape(-1, 2).float()
            priors.append(torch.cat([c - 4 * s, c + 4 * s], 1))
        out = DetOutput(feats=feats, head=head, priors=priors)
        if targets is not None:
            allp = torch.cat(priors)
            pos = torch.zeros(len(targets), allp.shape[0], dtype=torch.bool)
            for b, t in enumerate(targets):
                if len(t["boxes"]):
                    pos[b] = (box_iou(allp, t["boxes"]) >= 0.3).any(1)
            z = torch.zeros_like(pos, dtype=torch.long)
            out.assign = Assignment(labels=pos.long(), matched=z - 1, pos=pos, neg=~pos, ignore=pos & False,
                                    iou=pos.float())
            logits = out.cat_head("cls_logits")
            out.losses = {"task.cls": nn.functional.binary_cross_entropy_with_logits(
                logits, pos[..., None].float().expand_as(logits))}
        return out


def ld_task(cfg=None, student=None, teacher=None):
    torch.manual_seed(0)
    student = student or ToyGFL()
    teacher = teacher or ToyGFL()
    return build_distill_task(distill_config("ld", cfg or LDConfig()), student, teacher)


def ld_batch():
    g = torch.Generator().manual_seed(3)
    targets = [{"boxes": torch.tensor([[8.0, 10, 60, 50], [30, 30, 90, 95]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[40.0, 5, 100, 70], [0, 0, 110, 90]]), "labels": torch.tensor([3, 1])}]
    return torch.rand(2, 3, 96, 112, generator=g) * 255, targets, [{}, {}]


def test_ld_terms_values_and_gradients():
    task = ld_task()
    assert [t.key for t in task.distiller.terms] == ["kd.ld.ld", "kd.ld.kd", "kd.ld.vlr"]
    assert [t.weight for t in task.distiller.terms] == [0.25, 10.0, 0.25]
    images, targets, meta = ld_batch()
    losses = task((images, targets, meta))
    assert all(torch.isfinite(v) and v > 0 for k, v in losses.items() if k.startswith("kd.ld."))
    # recompute the three terms by hand from the two models' outputs
    with torch.no_grad():
        s = task.student(images, targets)
        t = task.teacher(images)
    pos = s.assign.pos
    sd, td = s.cat_head("box_dist"), t.cat_head("box_dist")
    sc, tc = s.cat_head("cls_logits"), t.cat_head("cls_logits")
    omega = sc.sigmoid().amax(-1)
    rows = kd_rows(sd.unflatten(-1, (4, 17)), td.unflatten(-1, (4, 17)), 10.0).sum(-1)  # [B, P]
    assert losses["kd.ld.ld"].item() == pytest.approx(0.25 * (rows * omega)[pos].sum().item() / 4, rel=1e-5)
    n3 = s.level_sizes()[0]
    kd = kd_rows(sc, tc, 2.0)
    assert pos[:, :n3].any() and pos[:, n3:].any()
    per_level = [kd[:, :n3][pos[:, :n3]].sum() / pos[:, :n3].sum(), kd[:, n3:][pos[:, n3:]].sum() / pos[:, n3:].sum()]
    assert losses["kd.ld.kd"].item() == pytest.approx(10 * sum(per_level).item(), rel=1e-5)
    v = torch.stack([vlr_weights(s.priors, tg["boxes"]) for tg in targets])
    assert (v > 0).any()
    assert losses["kd.ld.vlr"].item() == pytest.approx(0.25 * (rows * v).sum().item() / 16, rel=1e-5)
    sum(losses.values()).backward()
    assert task.student.reg.weight.grad.abs().sum() > 0 and task.student.cls.weight.grad.abs().sum() > 0


def test_ld_identity_gives_zero_and_gt_less_batch_zeros_with_graph():
    torch.manual_seed(0)
    student = ToyGFL()
    teacher = ToyGFL()
    teacher.load_state_dict(student.state_dict())
    task = ld_task(student=student, teacher=teacher)
    losses = task(ld_batch())
    assert all(abs(losses[k].item()) < 1e-4 for k in ("kd.ld.ld", "kd.ld.kd", "kd.ld.vlr"))
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    task = ld_task()
    losses = task((torch.rand(2, 3, 64, 64) * 255, [empty, dict(empty)], [{}, {}]))
    for k in ("kd.ld.ld", "kd.ld.kd", "kd.ld.vlr"):
        assert losses[k].item() == 0.0 and losses[k].requires_grad


def test_ld_uses_assigner_thresholds_and_faithful_flag():
    task = ld_task(LDConfig(faithful=False))
    images, targets, meta = ld_batch()
    with torch.no_grad():
        s = task.student(images, targets)
    ctx = DistillContext(teacher=None, student=s, targets=targets, step=0)
    vlr_term = task.distiller.terms[2]
    clean = vlr_term.mask(ctx)
    assert torch.equal(clean[1], vlr_weights(s.priors, targets[1]["boxes"], faithful=False))
    s.assign.thresholds = [torch.full((2,), 0.95), torch.full((2,), 0.0)]
    given = vlr_term.mask(DistillContext(teacher=None, student=s, targets=targets, step=0))
    assert not given[1].any() and torch.equal(
        given[0], vlr_weights(s.priors, targets[0]["boxes"], faithful=False, thresholds=torch.full((2,), 0.95)))


def test_ld_start_up_errors_name_the_key():
    from detkd.models.retinaface import RetinaFaceConfig
    from detkd.registry import build_model

    face = build_model(RetinaFaceConfig(width=0.25))
    with pytest.raises(ValueError, match="no distribution head key 'box_dist'"):
        ld_task(teacher=face)
    with pytest.raises(ValueError, match="reg_max 16 on the student but 7"):
        ld_task(teacher=ToyGFL(reg_max=7))
    with pytest.raises(ValueError, match="level 'p4' has stride 16 on the student but 32"):
        ld_task(teacher=ToyGFL(strides=(8, 32)))
    with pytest.raises(ValueError, match="sigmoid with 3 columns in the student but sigmoid with 5 columns"):
        ld_task(teacher=ToyGFL(k=5))


def test_ld_imitation_term():
    task = ld_task(LDConfig(im_weight=2.0, im_taps=["p3", "p4"]))
    assert [t.key for t in task.distiller.terms][-2:] == ["kd.ld.im.p3", "kd.ld.im.p4"]
    losses = task(ld_batch())
    assert losses["kd.ld.im.p3"] > 0 and torch.isfinite(losses["kd.ld.im.p4"])
    task = ld_task(LDConfig(im_weight=2.0, imitation="fitnet", im_taps=["p3", "p4"]))
    assert torch.isfinite(task(ld_batch())["kd.ld.im.p3"])


def test_ld_on_gfl_when_registered():
    from detkd.registry import MODELS, load_all

    load_all()
    torch.manual_seed(0)
    kw = dict(depth=18, num_classes=3, fpn_channels=32, stacked_convs=1, gn_groups=8)
    student, teacher = MODELS["gfl"](**kw), MODELS["gfl"](**kw)
    task = ld_task(student=student, teacher=teacher)
    images = torch.rand(2, 3, 128, 160) * 255
    targets = [{"boxes": torch.tensor([[10.0, 15, 60, 70], [75, 20, 150, 100]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[30.0, 30, 50, 45]]), "labels": torch.tensor([3])}]
    losses = task((images, targets, [{}, {}]))
    assert all(torch.isfinite(losses[k]) and losses[k] > 0 for k in ("kd.ld.ld", "kd.ld.kd", "kd.ld.vlr"))
    sum(losses.values()).backward()
    with torch.no_grad():
        out = student(images, targets)
    for b in range(2):  # our ATSS thresholds agree with the assigner's
        torch.testing.assert_close(atss_thresholds(out.priors, targets[b]["boxes"]), out.assign.thresholds[b])
