"""Distillation core: losses, masks, adapters, the Distiller, DistillTask and its start-up checks.

Uses ``ToyDet``, a two-level dense "detector" that fills ``DetOutput`` like the real models (tests/test_tdkd.py
covers RetinaFace).
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detkd.config import ConfigError, set_key
from detkd.distill.adapters import AdapterSpec, make_adapter
from detkd.distill.distiller import (
    DistillConfig,
    Distiller,
    DistillTask,
    Schedule,
    Term,
    build_distill_task,
    check_setup,
    get_tap,
)
from detkd.distill.feat import FeatConfig
from detkd.distill.kd import KDConfig
from detkd.distill.losses import feat_mse, kd_kl, masked_feat_l2, prob_l2_uncertain
from detkd.distill.masks import MaskInputs, priors_to_locations, tdkd_location_masks, tdkd_prior_masks
from detkd.structures import Assignment, DetOutput, HeadKey



# ------------------------------------------------------------------------------------------ toy model


class ToyDet(nn.Module):
    """Levels p3/p4 (strides 8/16), ``anchors`` per location, 2-way logits; ``targets[i]["pos"]`` lists the
    positive prior indices; the hard-negative ranking is prior index order with positives last."""

    def __init__(self, c: int = 8, task_convs: bool = False, anchors: int = 2, inplace: bool = False):
        super().__init__()
        self.levels, self.steps, self.a, self.inplace = ("p3", "p4"), (8, 16), anchors, inplace
        self.stem = nn.ModuleDict({lvl: nn.Conv2d(3, c, 1) for lvl in self.levels})
        self.cls = nn.ModuleDict({lvl: nn.Conv2d(c, anchors * 2, 1) for lvl in self.levels})
        self.task_convs = task_convs
        self.head_spec = {"cls_logits": HeadKey("softmax", 2)}
        self.channels = {lvl: c for lvl in self.levels}
        if task_convs:
            tower_names = [f"{t}_{lvl}" for t in ("cls", "reg") for lvl in self.levels]
            self.towers = nn.ModuleDict({name: nn.Conv2d(c, c, 1) for name in tower_names})
            self.channels.update({f"{t}_feat.{lvl}": c for t in ("cls", "reg") for lvl in self.levels})

    def forward(self, images, targets=None, decode=False, image_sizes=None):
        if self.inplace:
            images.div_(255.0)  # a bug the start-up check must catch
        x = images / 255.0
        feats, logits = {}, []
        for lvl, s in zip(self.levels, self.steps):
            f = self.stem[lvl](F.avg_pool2d(x, s, ceil_mode=True))  # [B, C, h, w]
            feats[lvl] = f
            if self.task_convs:
                feats[f"cls_feat.{lvl}"] = self.towers[f"cls_{lvl}"](f)
                feats[f"reg_feat.{lvl}"] = self.towers[f"reg_{lvl}"](f)
            z = self.cls[lvl](f).permute(0, 2, 3, 1)
            logits.append(z.reshape(z.shape[0], -1, 2))  # [B, h*w*A, 2]
        out = DetOutput(feats=feats, head={"cls_logits": logits})
        if targets is not None:
            conf = out.cat_head("cls_logits")  # [B, P, 2]
            b, p = conf.shape[:2]
            pos = torch.zeros(b, p, dtype=torch.bool)
            for i, t in enumerate(targets):
                pos[i, torch.as_tensor(t["pos"], dtype=torch.long)] = True
            order = torch.sort(pos.int(), dim=1, stable=True).indices
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(p).expand(b, p))
            neg = (rank < (7 * pos.sum(1, keepdim=True)).clamp(max=p - 1)) & ~pos
            n = pos.sum().clamp(min=1)
            sel = pos | neg
            cls = F.cross_entropy(conf[sel], pos[sel].long(), reduction="sum") / n
            loc = (conf[pos] ** 2).sum() / n
            out.assign = Assignment(pos.long(), torch.full((b, p), -1), pos, neg, ~sel, torch.zeros(b, p), rank)
            out.losses = {"task.loc": 2 * loc, "task.cls": cls}
            out.raw_losses = {"loc": loc, "cls": cls}
        return out


def toy_batch(b: int = 2, size: int = 32, pos=((0, 5), (33,))):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, size, size, generator=g) * 255
    return images, [{"pos": list(p)} for p in pos[:b]], [{} for _ in range(b)]


def feat_term(name="p3", s="p3", t="p3", key="a", **kw):
    return Term(name, s, t, feat_mse, adapter=AdapterSpec(key), **kw)


# ---------------------------------------------------------------------------------------------- losses


def test_masked_feat_l2_zero_on_equality_and_32_on_three_locations():
    t = torch.randn(1, 64, 8, 8)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 1, 2] = mask[0, 4, 4] = mask[0, 7, 0] = True
    assert masked_feat_l2(t.clone(), t, mask).item() == 0.0
    s = t.clone()
    s[:, :, mask[0]] += 1.0  # diff 1 on the 3 masked locations, all 64 channels
    s[:, :, ~mask[0]] += 5.0  # unmasked locations must not count
    assert masked_feat_l2(s, t, mask).item() == pytest.approx(3 * 64 / 6)  # = 32


def test_masked_feat_l2_empty_mask_is_zero_with_finite_grad():
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = masked_feat_l2(s, torch.zeros(2, 4, 3, 3), torch.zeros(2, 3, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(s.grad).all()


def test_masked_feat_l2_defeat_denominator_counts_channels():
    mask = torch.zeros(1, 20, 30, dtype=torch.bool)
    mask.view(-1)[:230] = True
    s, t = torch.ones(1, 256, 20, 30), torch.zeros(1, 256, 20, 30)
    assert masked_feat_l2(s, t, mask, denom="defeat").item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown denom"):
        masked_feat_l2(s, t, mask, denom="nope")


def test_masked_feat_l2_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"mask shape \(1, 4, 4\).*\(1, 3, 3\)"):
        masked_feat_l2(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="student shape"):
        masked_feat_l2(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3), None)


def test_prob_l2_uncertain_reference_values():
    p_t = torch.tensor([[[0.4, 0.6]]])
    p_s = torch.tensor([[[0.6, 0.4]]])
    assert prob_l2_uncertain(p_s, p_t).item() == pytest.approx(0.04)  # 2 entries of 0.2²
    assert prob_l2_uncertain(p_t.clone(), p_t).item() == 0.0
    p_t9 = torch.tensor([[[0.1, 0.9]]])  # exactly on the band edge: not selected (strict)
    assert prob_l2_uncertain(torch.tensor([[[0.5, 0.5]]]), p_t9).item() == 0.0
    # mixed: one uncertain prior (selected), one certain (ignored)
    p_t2 = torch.tensor([[[0.4, 0.6], [0.95, 0.05]]])
    p_s2 = torch.tensor([[[0.6, 0.4], [0.0, 1.0]]])
    assert prob_l2_uncertain(p_s2, p_t2).item() == pytest.approx(0.04)


def test_kd_kl_values_and_mask():
    z_t = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    z_s = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    assert kd_kl(z_t.clone(), z_t, T=2.0).item() == pytest.approx(0.0, abs=1e-7)
    q = torch.softmax(z_t[0, 0] / 2, -1)
    kl0 = (q * (q.log() - torch.log(torch.tensor([0.5, 0.5])))).sum().item()
    mask = torch.tensor([[True, False]])
    assert kd_kl(z_s, z_t, T=2.0, mask=mask).item() == pytest.approx(4 * kl0, rel=1e-5)
    assert kd_kl(z_s, z_t, T=2.0).item() == pytest.approx(4 * kl0 / 2, rel=1e-5)  # mean over both priors
    assert kd_kl(z_s, z_t, T=1.0, mask=torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0
    with pytest.raises(ValueError, match="temperature"):
        kd_kl(z_s, z_t, T=0.0)


def test_feat_mse_mask_mean_over_masked_elements():
    s, t = torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    s[0, :, 0, 0] = 2.0
    s[0, :, 1, 1] = 10.0  # outside the mask
    mask = torch.tensor([[[True, True], [False, False]]])
    assert feat_mse(s, t, mask).item() == pytest.approx(4 * 4 / 8)
    assert feat_mse(s, t).item() == pytest.approx((4 * 4 + 4 * 100) / 16)


# ----------------------------------------------------------------------------------------------- masks


def test_level_split_640_first_level_ends_at_12800():
    sizes, hw = [12800, 3200, 800], [(80, 80), (40, 40), (20, 20)]
    prior = torch.zeros(1, 16800, dtype=torch.bool)
    prior[0, 12799] = True  # last prior of level 0: location (79, 79), anchor 1
    prior[0, 12800] = True  # first prior of level 1: location (0, 0)
    m0, m1, m2 = priors_to_locations(prior, sizes, hw, 2)
    assert m0.shape == (1, 80, 80) and m0.sum() == 1 and m0[0, 79, 79]
    assert m1.sum() == 1 and m1[0, 0, 0] and m2.sum() == 0


def test_level_split_non_640_input_320x256():
    from detkd.ops.priors import feature_sizes

    hw = feature_sizes(320, 256, [8, 16, 32])  # [(40, 32), (20, 16), (10, 8)]
    sizes = [h * w * 2 for h, w in hw]
    assert sizes == [2560, 640, 160]
    prior = torch.zeros(2, sum(sizes), dtype=torch.bool)
    prior[1, 2560 + (3 * 16 + 5) * 2 + 1] = True  # image 1, level 1, row 3, col 5, anchor 1
    masks = priors_to_locations(prior, sizes, hw)  # anchors per location derived
    assert [tuple(m.shape) for m in masks] == [(2, 40, 32), (2, 20, 16), (2, 10, 8)]
    assert masks[1][1, 3, 5] and int(sum(m.sum() for m in masks)) == 1
    # the 640 split applied to this input is rejected, not silently wrong
    with pytest.raises(ValueError, match="sum to 16800"):
        priors_to_locations(prior, [12800, 3200, 800], hw)
    with pytest.raises(ValueError, match="cannot be split over a 40x32"):
        priors_to_locations(prior, [2561, 639, 160], hw)


def _assign(pos: torch.Tensor, rank: torch.Tensor | None) -> Assignment:
    b, p = pos.shape
    z = torch.zeros(b, p)
    return Assignment(pos.long(), torch.full((b, p), -1), pos, ~pos, torch.zeros_like(pos), z, rank)


def test_tdkd_prior_masks_take_top_3_per_positive_from_the_same_ranking():
    p = 20
    pos = torch.zeros(3, p, dtype=torch.bool)
    pos[0, 7] = True  # 1 positive -> the 3 hardest negatives
    pos[2, :10] = True  # 10 positives -> min(30, 19) = 19 ranks, i.e. every negative
    rank = torch.stack([torch.randperm(p, generator=torch.Generator().manual_seed(i)) for i in range(3)])
    order = [1, 2, 3, 0, 4, 5, 6] + list(range(8, 20)) + [7]  # order[r] = prior of rank r; positive 7 last
    rank[0, order] = torch.arange(p)
    cls, loc = tdkd_prior_masks(_assign(pos, rank), neg_ratio=3)
    assert torch.equal(loc, pos)
    assert cls[0].nonzero().flatten().tolist() == [1, 2, 3, 7]  # ranks 0, 1, 2 + the positive
    assert not cls[1].any()  # no positive -> no distillation negative
    assert cls[2].all()


def test_tdkd_masks_need_neg_rank_and_matching_levels():
    pos = torch.zeros(1, 40, dtype=torch.bool)
    with pytest.raises(ValueError, match="neg_rank"):
        tdkd_prior_masks(_assign(pos, None))
    with pytest.raises(ValueError, match="2 prior levels"):
        tdkd_location_masks(MaskInputs(_assign(pos, torch.arange(40)[None]), [32, 8], [(4, 4)], [], []))


# -------------------------------------------------------------------------------------------- adapters


def test_frozen_adapter_is_seeded_untrained_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = make_adapter(64, 64, frozen=True, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    b = make_adapter(64, 64, frozen=True, seed=7)
    c = make_adapter(64, 64, frozen=True, seed=8)
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert a.bias is None and not a.weight.requires_grad
    assert a.weight.abs().max() <= 1 / 8  # PyTorch default init: bound 1/sqrt(fan_in)
    trainable = make_adapter(8, 16, "conv3x3", bias=True)
    assert trainable.weight.requires_grad and trainable(torch.zeros(1, 8, 5, 5)).shape == (1, 16, 5, 5)
    with pytest.raises(ValueError, match="identity adapter needs equal channels"):
        make_adapter(8, 16, "identity")
    with pytest.raises(ValueError, match="unknown adapter kind"):
        make_adapter(8, 8, "conv5x5")


def test_schedule_warmup_and_decay():
    assert Schedule(warmup_iters=4).factor(1) == pytest.approx(0.25)
    assert Schedule(warmup_iters=4, warmup="zero").factor(3) == 0.0
    assert Schedule(warmup_iters=4, warmup="zero").factor(4) == 1.0
    assert Schedule(decay_start=10, decay_iters=10).factor(15) == pytest.approx(0.5)
    assert Schedule(decay_start=10, decay_iters=10).factor(30) == 0.0


# ------------------------------------------------------------------------------------------- distiller


def test_distiller_sizes_adapters_from_declared_channels_and_names_terms():
    terms = [feat_term("p3", key="k3"), feat_term("p4", "p4", "p4", key="k4", weight=0.5)]
    d = Distiller(terms, {"p3": 8, "p4": 8}, {"p3": 16, "p4": 4})
    assert d.adapters["k3"].weight.shape == (16, 8, 1, 1) and d.adapters["k4"].weight.shape == (4, 8, 1, 1)
    for t in terms:
        t.method = "feat"
    s, t = ToyDet(8), ToyDet(16)
    d4 = Distiller(terms, s.channels, t.channels)  # p4 teacher declared 16 now
    out = d4(t(toy_batch()[0]), s(toy_batch()[0]), None, 0)
    assert sorted(out) == ["kd.feat.p3", "kd.feat.p4"]
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    with pytest.raises(KeyError, match=r"student tap 'p9'.*declared: p3, p4"):
        Distiller([feat_term("x", "p9", "p3")], s.channels, t.channels)
    with pytest.raises(ValueError, match="named 'kd.a'"):
        Distiller([Term("a", "p3", "p3", feat_mse), Term("a", "p4", "p4", feat_mse)])
    with pytest.raises(ValueError, match="different settings"):
        shared = [feat_term("a", key="k"), feat_term("b", key="k", t="cls_feat.p3")]
        Distiller(shared, {"p3": 8}, {"p3": 8, "cls_feat.p3": 4})


def test_distiller_weight_schedule_and_group_scale():
    s_out = DetOutput(feats={"p3": torch.ones(1, 2, 2, 2)})
    t_out = DetOutput(feats={"p3": torch.zeros(1, 2, 2, 2), "p4": torch.zeros(1, 2, 2, 2)})
    half = lambda total, ctx: 0.5 / total  # noqa: E731  rescales the group's sum to 0.5
    terms = [
        Term("a", "p3", "p3", feat_mse, weight=2.0, schedule=Schedule(warmup_iters=10), method="m"),
        Term("g1", "p3", "p3", feat_mse, group="g", group_scale=half, method="m"),
        Term("g2", "p3", "p4", feat_mse, weight=3.0, group="g", group_scale=half, method="m"),
    ]
    out = Distiller(terms)(t_out, s_out, None, step=5)
    assert out["kd.m.a"].item() == pytest.approx(2.0 * 0.5 * 1.0)
    assert out["kd.m.g1"].item() == pytest.approx(0.25) and out["kd.m.g2"].item() == pytest.approx(0.75)


def test_get_tap_lists_available_taps():
    out = ToyDet()(toy_batch()[0])
    assert get_tap(out, "head.cls_logits").shape == (2, 40, 2)  # 4*4*2 + 2*2*2 priors
    with pytest.raises(KeyError, match=r"no tap 'cls_feat.p3'.*available taps: p3, p4, head.cls_logits"):
        get_tap(out, "cls_feat.p3", "teacher")


# ------------------------------------------------------------------------------------------------ task


def toy_feat(**kw) -> FeatConfig:
    return FeatConfig(**{"student_taps": ["p3", "p4"], "teacher_taps": ["p3", "p4"], **kw})


def make_task(methods=("feat",), **sections) -> DistillTask:
    torch.manual_seed(0)
    sections.setdefault("feat", toy_feat())
    cfg = DistillConfig(methods=list(methods), **sections)
    return build_distill_task(cfg, ToyDet(8), ToyDet(16, task_convs=True))


def test_task_keeps_the_teacher_out_of_state_dict_parameters_and_training():
    task = make_task(("feat", "kd"))
    teacher_ids = {id(p) for p in task.teacher.parameters()}
    assert teacher_ids and not teacher_ids & {id(p) for p in task.parameters()}
    teacher_tensors = {t.data_ptr() for t in task.teacher.state_dict().values()}
    assert not teacher_tensors & {t.data_ptr() for t in task.state_dict().values()}
    assert all(k.split(".")[0] in ("student", "distiller", "kd_step") for k in task.state_dict())
    task.train()
    assert task.training and task.student.training and not task.teacher.training
    assert not any(p.requires_grad for p in task.teacher.parameters())
    task.double()  # device/dtype moves reach the teacher
    assert next(task.teacher.parameters()).dtype == torch.float64
    task.float()
    losses = task(toy_batch())
    assert set(losses) == {"task.loc", "task.cls", "kd.feat.p3", "kd.feat.p4", "kd.kd.cls"}
    sum(losses.values()).backward()
    assert all(p.grad is None for p in task.teacher.parameters())
    assert task.distiller.adapters["feat_p3"].weight.grad is not None
    assert int(task.kd_step) == 1
    task.eval()
    task(toy_batch())
    assert int(task.kd_step) == 1


def test_kd_and_feat_methods_select_from_the_student_assignment():
    task = make_task(("feat", "kd"), kd=KDConfig(select="pos"), feat=toy_feat(mask="gt"))
    images, targets, _ = toy_batch(2, pos=((0,), (33,)))
    t_out, s_out = task.teacher(images), task.student(images, targets)
    kd_term, p3_term = task.distiller.terms[2], task.distiller.terms[0]
    from detkd.distill.distiller import DistillContext

    ctx = DistillContext(t_out, s_out, targets, 0)
    assert kd_term.mask(ctx).nonzero().tolist() == [[0, 0], [1, 33]]
    p3 = p3_term.mask(ctx)  # prior 0 = level p3 (4x4), location (0, 0) of image 0
    assert p3.shape == (2, 4, 4) and p3.nonzero().tolist() == [[0, 0, 0]]
    p4 = task.distiller.terms[1].mask(ctx)  # prior 33 = level p4 prior 1 -> location (0, 0) of image 1
    assert p4.nonzero().tolist() == [[1, 0, 0]]


def test_check_setup_names_both_taps_and_shapes_on_mismatch():
    task = make_task(("feat",), feat=FeatConfig(student_taps=["p3"], teacher_taps=["p4"]))
    with pytest.raises(ValueError, match=r"student tap 'p3' \(2, 8, 4, 4\).*teacher tap 'p4' \(2, 16, 2, 2\)"):
        task.check_setup(toy_batch())
    student = ToyDet(8)
    student.channels["p3"] = 4  # declared channels that disagree with the output
    task = build_distill_task(DistillConfig(methods=["feat"], feat=toy_feat()), student, ToyDet(16))
    with pytest.raises(ValueError, match=r"cannot take student tap 'p3' \(2, 8, 4, 4\).*declared channels"):
        task.check_setup(toy_batch())


def test_check_setup_missing_tap_lists_available_taps():
    s, t = ToyDet(8), ToyDet(16)
    d = Distiller([Term("x", "p3", "cls_feat.p3", feat_mse, method="m")])
    with pytest.raises(KeyError, match=r"teacher output has no tap 'cls_feat.p3'.*available taps: p3, p4"):
        check_setup(t, s, d, toy_batch())


def test_check_setup_teacher_loaded_and_inplace_inputs():
    task = make_task(("feat",))
    with pytest.raises(RuntimeError, match="teacher's weights were not loaded"):
        task.check_setup(toy_batch(), teacher_loaded=False)
    report = nn.Module().load_state_dict({}, strict=False)
    report.missing_keys.extend(["stem.p3.weight", "stem.p3.bias"])
    with pytest.raises(RuntimeError, match="lacks 2 weights: stem.p3.weight"):
        task.check_setup(toy_batch(), teacher_loaded=report)
    bad = build_distill_task(DistillConfig(methods=["feat"], feat=toy_feat()), ToyDet(8), ToyDet(16, inplace=True))
    with pytest.raises(RuntimeError, match="changed the images tensor in place"):
        bad.check_setup(toy_batch())


def test_check_setup_warns_on_a_chance_level_teacher():
    task = make_task(("feat",))
    with torch.no_grad():  # a teacher that calls everything background: balanced accuracy 0.5
        for conv in task.teacher.cls.values():
            conv.weight.zero_()
            conv.bias.copy_(torch.tensor([5.0, -5.0, 5.0, -5.0]))
    with pytest.warns(UserWarning, match="balanced accuracy .* is 0.500"):
        report = task.check_setup(toy_batch())
    assert report["teacher_balanced_acc"] == pytest.approx(0.5)
    def oracle(_module, _args, out):  # a perfect teacher: face exactly on its positives -> no warning
        if out.assign is not None:
            face = out.assign.pos.float() * 20 - 10  # [B, P]
            logits, start = [], 0
            for z in out.head["cls_logits"]:
                f = face[:, start : start + z.shape[1]]
                logits.append(torch.stack([-f, f], -1))
                start += z.shape[1]
            out.head["cls_logits"] = logits
        return out

    task.teacher.register_forward_hook(oracle)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = task.check_setup(toy_batch())
    assert set(report["taps"]) == {"kd.feat.p3", "kd.feat.p4"} and report["teacher_balanced_acc"] == 1.0


# ---------------------------------------------------------------------------------------------- config


def test_distill_config_overrides_and_method_errors():
    cfg = DistillConfig()
    assert cfg.methods == ["tdkd"] and cfg.tdkd.prob_weight == 50.0 and cfg.kd.temperature == 2.0
    set_key(cfg, "tdkd.scale", "fixed")
    set_key(cfg, "methods", "['tdkd','kd']")
    set_key(cfg, "feat.student_taps", "['p4']")
    assert cfg.tdkd.scale == "fixed" and cfg.methods == ["tdkd", "kd"] and cfg.feat.student_taps == ["p4"]
    with pytest.raises(ConfigError, match="must be one of"):
        set_key(cfg, "tdkd.scale", "dynamik")
    with pytest.raises(KeyError, match="unknown detection distillation method 'tdk'.*did you mean 'tdkd'"):
        build_distill_task(DistillConfig(methods=["tdk"]), ToyDet(), ToyDet())
    with pytest.raises(KeyError, match="'arcface' is a face-recognition objective, not a detection distillation"):
        build_distill_task(DistillConfig(methods=["arcface"]), ToyDet(), ToyDet())
    with pytest.raises(ValueError, match="twice"):
        build_distill_task(DistillConfig(methods=["kd", "kd"]), ToyDet(), ToyDet())
    with pytest.raises(TypeError, match="no `channels` dict"):
        build_distill_task(DistillConfig(methods=["feat"]), nn.Linear(1, 1), ToyDet())
    with pytest.raises(TypeError, match="distill.kd: the student model.*no `head_spec`"):
        build_distill_task(DistillConfig(methods=["kd"]), nn.Linear(1, 1), ToyDet())
