"""TDKD on real RetinaFace models with tiny inputs: masks, terms, scale, adapters, one training step.

METHODS.md §1.7-1.12.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from detkd.distill.distiller import DistillConfig, DistillContext, build_distill_task
from detkd.distill.feat import FeatConfig
from detkd.distill.losses import prob_l2_uncertain
from detkd.distill.masks import mask_inputs, priors_to_locations, tdkd_location_masks, tdkd_prior_masks
from detkd.distill.tdkd import TDKDConfig, loc_over_feat
from detkd.models.retinaface import RetinaFaceConfig
from detkd.registry import build_model

LEVELS = ("p3", "p4", "p5")



def models(seed: int = 0):
    torch.manual_seed(seed)
    student = build_model(RetinaFaceConfig(width=0.25))
    teacher = build_model(RetinaFaceConfig(width=0.75, task_convs=True))
    return student, teacher


def tdkd_task(seed: int = 0, **tdkd_kw):
    student, teacher = models(seed)
    return build_distill_task(DistillConfig(methods=["tdkd"], tdkd=TDKDConfig(**tdkd_kw)), student, teacher)


def face(box, valid=True) -> dict:
    box = torch.tensor([box], dtype=torch.float32)
    x1, y1, x2, y2 = box[0].tolist()
    lms = torch.tensor([[[x1 + (x2 - x1) * f, y1 + (y2 - y1) * g] for f, g in
                         ((0.3, 0.4), (0.7, 0.4), (0.5, 0.55), (0.35, 0.75), (0.65, 0.75))]])
    return {"boxes": box, "labels": torch.ones(1, dtype=torch.long), "landmarks": lms,
            "landmarks_valid": torch.tensor([valid])}


def batch(size=(96, 96), targets=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = targets or [face((20, 20, 52, 52)), face((10, 30, 40, 70), valid=False)]
    images = torch.rand(len(targets), 3, *size, generator=g) * 255
    return images, targets, [{} for _ in targets]


def test_terms_are_per_level_and_task_with_1x1_adapters():
    task = tdkd_task()
    names = [t.key for t in task.distiller.terms]
    per_level = [f"kd.tdkd.{task_}.{lvl}" for lvl in ("p3", "p4", "p5") for task_ in ("cls", "loc")]
    assert names == per_level + ["kd.tdkd.prob"]
    teacher_taps = [t.teacher for t in task.distiller.terms]
    assert teacher_taps[:2] == ["cls_feat.p3", "reg_feat.p3"] and teacher_taps[-1] == "head.cls_logits"
    assert len(task.distiller.adapters) == 6
    for conv in task.distiller.adapters.values():
        assert conv.weight.shape == (64, 64, 1, 1) and conv.bias is None and conv.weight.requires_grad
    assert task.distiller.terms[-1].weight == 50.0


def test_prior_count_640_and_level_split():
    student, _ = models()
    with torch.no_grad():
        out = student(torch.zeros(1, 3, 640, 640), [face((156, 76, 172, 92))])  # = level-0 anchor (10, 20)
    assert out.level_sizes() == [12800, 3200, 800] and sum(out.level_sizes()) == 16800
    hw = [tuple(out.feats[k].shape[-2:]) for k in ("p3", "p4", "p5")]
    masks = tdkd_location_masks(mask_inputs(out, LEVELS))
    assert [tuple(c.shape) for c, _ in masks] == [(1, 80, 80), (1, 40, 40), (1, 20, 20)]
    pos = out.assign.pos[0].nonzero().flatten().tolist()
    assert pos == [(10 * 80 + 20) * 2]  # below 12800: level 0
    assert masks[0][1][0].nonzero().tolist() == [[10, 20]] and not masks[1][1].any() and not masks[2][1].any()


def test_gt_equal_to_an_anchor_is_in_both_masks():
    student, _ = models()
    # level 0 (stride 8) anchor of size 16 at row 5, col 7: centre (60, 44); level 1 (stride 16) size-64 anchor
    # at row 2, col 2: centre (40, 40)
    targets = [face((52, 36, 68, 52)), face((8, 8, 72, 72))]
    with torch.no_grad():
        out = student(torch.zeros(2, 3, 96, 96), targets)
    hw = [tuple(out.feats[k].shape[-2:]) for k in ("p3", "p4", "p5")]
    masks = tdkd_location_masks(mask_inputs(out, LEVELS))
    (cls0, loc0), (cls1, loc1), _ = masks
    assert loc0[0].nonzero().tolist() == [[5, 7]] and cls0[0, 5, 7]  # neighbours have IoU 1/3 < 0.35
    assert loc1[1, 2, 2] and cls1[1, 2, 2]
    for cls, loc in masks:  # loc ⊆ cls
        assert not (loc & ~cls).any()
    n_pos = out.assign.pos.sum(1)
    assert int(sum(c[0].sum() for c, _ in masks)) <= int(4 * n_pos[0])  # pos + 3 negatives per positive


def test_masks_for_a_320x256_input_follow_the_actual_levels():
    student, _ = models()
    # level 2 (stride 32) anchor of size 256 at row 3, col 4 of a 10x8 map: centre (144, 112)
    targets = [face((16, -16, 272, 240))]
    with torch.no_grad():
        out = student(torch.zeros(1, 3, 320, 256), targets)
    sizes = out.level_sizes()
    assert sizes == [40 * 32 * 2, 20 * 16 * 2, 10 * 8 * 2]
    hw = [tuple(out.feats[k].shape[-2:]) for k in ("p3", "p4", "p5")]
    masks = tdkd_location_masks(mask_inputs(out, LEVELS))
    assert [tuple(c.shape[1:]) for c, _ in masks] == hw == [(40, 32), (20, 16), (10, 8)]
    assert masks[2][1][0, 3, 4] and masks[2][0][0, 3, 4]
    cls_prior, loc_prior = tdkd_prior_masks(out.assign)
    assert torch.equal(torch.cat([m.flatten(1) for m in priors_to_locations(loc_prior, sizes, hw)], 1),
                       torch.cat([loc.flatten(1) for _, loc in masks], 1))


def test_dynamic_scale_matches_l_loc_and_is_guarded_without_positives():
    task = tdkd_task()
    task.train()
    images, targets, meta = batch()
    losses = task((images, targets, meta))
    t_out, s_out = task.teacher(images), task.student(images, targets)
    feat = sum(v for k, v in losses.items() if k.startswith(("kd.tdkd.cls", "kd.tdkd.loc")))
    l_loc = losses["task.loc"] / 2
    assert feat.item() == pytest.approx(l_loc.item(), rel=1e-4)  # d_feat·sg(L_loc)/sg(L_feat)·L_feat = L_loc
    # the prob term is 50 × the formula on the teacher's and student's softmax
    p_t = t_out.cat_head("cls_logits").softmax(-1)
    p_s = s_out.cat_head("cls_logits").softmax(-1)
    assert losses["kd.tdkd.prob"].item() == pytest.approx(50 * prob_l2_uncertain(p_s, p_t).item(), rel=1e-4)

    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)} for _ in range(2)]
    losses = task(batch(targets=empty))
    for k, v in losses.items():
        assert torch.isfinite(v), k
        if k.startswith(("kd.tdkd.cls", "kd.tdkd.loc")):
            assert v.item() == 0.0
    ctx = DistillContext(None, s_out, None, 0)
    assert loc_over_feat(torch.tensor(0.0), ctx).item() == 0.0


def test_fixed_scale_gives_the_raw_feature_loss():
    dyn, fixed = tdkd_task(seed=1), tdkd_task(seed=1, scale="fixed")
    b = batch()
    l_dyn, l_fixed = dyn(b), fixed(b)
    keys = [k for k in l_fixed if k.startswith(("kd.tdkd.cls", "kd.tdkd.loc"))]
    raw = sum(l_fixed[k] for k in keys)
    assert raw.item() > 0
    ratio = (l_fixed["task.loc"] / 2 / raw).item()
    for k in keys:
        assert l_dyn[k].item() == pytest.approx(l_fixed[k].item() * ratio, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("faithful", [False, True])
def test_one_step_clean_trains_adapters_faithful_keeps_them_frozen(faithful):
    task = tdkd_task(faithful=faithful)
    task.train()
    before = {k: a.weight.detach().clone() for k, a in task.distiller.adapters.items()}
    losses = task(batch())
    kd = {k: v for k, v in losses.items() if k.startswith("kd.tdkd.")}
    assert len(kd) == 7 and all(torch.isfinite(v) for v in kd.values())
    sum(losses.values()).backward()
    grads = [a.weight.grad for a in task.distiller.adapters.values()]
    if faithful:
        assert all(g is None for g in grads)
        assert not any(p.requires_grad for p in task.distiller.parameters())
        again = tdkd_task(seed=5, faithful=True)  # seeded: same projections whatever the global RNG
        for k, a in again.distiller.adapters.items():
            assert torch.equal(a.weight, before[k])
    else:
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    student_grads = [p.grad for p in task.student.parameters() if p.grad is not None]
    assert student_grads and all(torch.isfinite(g).all() for g in student_grads)
    assert all(p.grad is None for p in task.teacher.parameters())
    assert not any("teacher" in k for k in task.state_dict())
    teacher_ptrs = {p.data_ptr() for p in task.teacher.parameters()}
    assert not teacher_ptrs & {p.data_ptr() for p in task.parameters()}


def test_start_up_checks_on_retinaface():
    task = tdkd_task()
    with warnings.catch_warnings():  # an untrained teacher may warn about chance-level accuracy
        warnings.simplefilter("ignore")
        report = task.check_setup(batch(), teacher_loaded=True)
    assert report["taps"]["kd.tdkd.cls.p3"] == ((2, 64, 12, 12), (2, 64, 12, 12))
    assert report["teacher_balanced_acc"] is not None
    student, plain_teacher = models()[0], build_model(RetinaFaceConfig(width=0.75))  # no task convs
    with pytest.raises(KeyError, match=r"teacher tap 'cls_feat.p3'.*declared: p3, p4, p5"):
        build_distill_task(DistillConfig(methods=["tdkd"]), student, plain_teacher)
    student, teacher = models()
    mixed = build_distill_task(
        DistillConfig(methods=["feat"], feat=FeatConfig(student_taps=["p3"], teacher_taps=["p4"])), student, teacher
    )
    with pytest.raises(ValueError, match=r"student tap 'p3' \(2, 64, 12, 12\).*teacher tap 'p4' \(2, 64, 6, 6\)"):
        mixed.check_setup(batch())


def test_methods_compose_on_retinaface():
    student, teacher = models()
    task = build_distill_task(DistillConfig(methods=["tdkd", "kd", "feat"]), student, teacher)
    losses = task(batch())
    assert {"kd.tdkd.prob", "kd.kd.cls", "kd.feat.p3", "kd.feat.p5", "task.landm"} <= set(losses)
    assert len(task.distiller.adapters) == 9 and all(torch.isfinite(v) for v in losses.values())
