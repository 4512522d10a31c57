"""The method-agnostic distillation core: sigmoid multi-class heads through the Distiller, head_spec checks,
the teacher-query hook, mask inputs, adapter init and the registry-driven DistillConfig."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from detkd.config import ConfigError, all_keys, set_key, to_dict
from detkd.distill.adapters import AdapterSpec, build_adapter, make_adapter
from detkd.distill.distiller import (
    DistillConfig,
    DistillContext,
    Term,
    build_distill_task,
    teacher_balanced_accuracy,
)
from detkd.distill.feat import FeatConfig
from detkd.distill.kd import KDConfig
from detkd.distill.losses import feat_mse, kd_kl
from detkd.distill.masks import mask_inputs
from detkd.distill.tdkd import TDKDConfig
from detkd.models.retinaface import retinaface_mnet
from tests._toy_dense import ToySigmoidDet, toy_targets


def toy_pair(task_convs: bool = False):
    torch.manual_seed(0)
    return ToySigmoidDet(3, c=8), ToySigmoidDet(3, c=16, task_convs=task_convs)


def toy_batch():
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 255
    return images, toy_targets(3), [{}, {}]


# ------------------------------------------------------------------------------------------ sigmoid KD


def test_kd_kl_sigmoid_is_one_bernoulli_kl_per_column():
    s, t = torch.zeros(1, 1), torch.full((1, 1), math.log(3.0))  # p = 0.5, q = 0.75
    want = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_kl(s, t, kind="sigmoid").item() == pytest.approx(want, rel=1e-6)
    z = torch.randn(4, 7, 3)
    assert kd_kl(z, z.clone(), T=2.0, kind="sigmoid").item() == pytest.approx(0.0, abs=1e-6)
    # large logits stay finite (log-sigmoid through softplus)
    assert torch.isfinite(kd_kl(torch.full((2, 3), -80.0), torch.full((2, 3), 80.0), kind="sigmoid"))
    with pytest.raises(ValueError, match="unknown kind"):
        kd_kl(z, z, kind="softplus")


def test_kd_and_feat_run_through_the_distiller_on_a_sigmoid_detector():
    student, teacher = toy_pair()
    cfg = DistillConfig(methods=["kd", "feat"], kd=KDConfig(temperature=2.0, select="pos"),
                        feat=FeatConfig(student_taps=["p3", "p4"], teacher_taps=["p3", "p4"], mask="gt"))
    task = build_distill_task(cfg, student, teacher)
    batch = toy_batch()
    losses = task(batch)
    assert {"task.cls", "task.box", "kd.kd.cls", "kd.feat.p3", "kd.feat.p4"} == set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert student.cls["p3"].weight.grad is not None and task.distiller.adapters["feat_p3"].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    # the KD value: Bernoulli KL per class column (K = 3 sigmoids, no background column), mean over positives
    images, targets, _ = batch
    with torch.no_grad():
        s_out, t_out = student(images, targets), teacher(images)
        pos = s_out.assign.pos
        zs, zt = s_out.cat_head("cls_logits")[pos] / 2, t_out.cat_head("cls_logits")[pos] / 2  # [n, 3]
        q = zt.sigmoid()
        kl = (F.binary_cross_entropy_with_logits(zs, q, reduction="none")
              - F.binary_cross_entropy_with_logits(zt, q, reduction="none")).sum(-1)
        ref = kl.mean() * 4
        got = task.distiller(t_out, s_out, targets)["kd.kd.cls"]
    assert pos.sum() > 0 and got.item() == pytest.approx(ref.item(), rel=1e-5)


@pytest.mark.parametrize("method, section", [("kd", KDConfig()), ("tdkd", TDKDConfig())])
def test_class_kd_fails_at_build_time_on_softmax_vs_sigmoid(method, section):
    torch.manual_seed(0)
    student, teacher = retinaface_mnet(), ToySigmoidDet(3)
    with pytest.raises(ValueError, match=r"softmax with 2 columns in the student but sigmoid with 3 columns"):
        build_distill_task(DistillConfig(methods=[method], **{method: section}), student, teacher)
    with pytest.raises(KeyError, match="declares no head key 'logitz'"):
        build_distill_task(DistillConfig(methods=["kd"], kd=KDConfig(logits="logitz")), student, retinaface_mnet())
    with pytest.raises(ValueError, match="'box_reg' is of kind 'deltas'"):
        build_distill_task(DistillConfig(methods=["kd"], kd=KDConfig(logits="box_reg")), student, retinaface_mnet())


def test_teacher_balanced_accuracy_on_a_multiclass_sigmoid_teacher():
    _, teacher = toy_pair()
    batch = toy_batch()

    def force(correct: bool):
        def hook(_module, _args, out):
            if out.assign is not None:
                a = out.assign
                z = torch.full_like(out.cat_head("cls_logits"), -10.0)  # [B, P, 3]: background everywhere
                if correct:
                    onehot = F.one_hot(a.labels.clamp(min=0), 4)[..., 1:].bool() & a.pos[..., None]
                    z[onehot] = 10.0
                else:  # foreground, but always class 1
                    z[..., 0][a.pos] = 10.0
                sizes = [t.shape[1] for t in out.head["cls_logits"]]
                out.head["cls_logits"] = list(z.split(sizes, dim=1))
            return out

        return hook

    h = teacher.register_forward_hook(force(True))
    assert teacher_balanced_accuracy(teacher, [batch]) == 1.0
    h.remove()
    h = teacher.register_forward_hook(force(False))
    labels = teacher(batch[0], batch[1]).assign.labels
    h.remove()
    pos_labels = labels[labels > 0]
    h = teacher.register_forward_hook(force(False))
    tpr = float((pos_labels == 1).float().mean())  # only the class-1 positives are right
    assert teacher_balanced_accuracy(teacher, [batch]) == pytest.approx(0.5 * (tpr + 1.0))
    h.remove()
    assert 0 < tpr < 1


# ------------------------------------------------------------------------------------ teacher queries


def test_query_teacher_runs_a_teacher_method_without_grad_on_student_results():
    student, teacher = toy_pair()
    seen = {}

    def querying_mask(ctx: DistillContext):
        feats = ctx.student.feats
        out = ctx.query_teacher("head_forward", {k: feats[k].detach().repeat(1, 2, 1, 1) for k in ("p3", "p4")})
        seen["teacher_training"] = ctx.teacher_model.training
        seen["head"] = out[0]["cls_logits"][0]
        return None

    cfg = DistillConfig(methods=["feat"], feat=FeatConfig(student_taps=["p3"], teacher_taps=["p3"]))
    task = build_distill_task(cfg, student, teacher)
    task.distiller.terms[0].mask = querying_mask
    task.train()
    task(toy_batch())
    assert seen["teacher_training"] is False
    assert seen["head"].shape == (2, 8 * 12 * 2, 3) and not seen["head"].requires_grad
    ctx = DistillContext(None, None, None, 0, teacher_model=teacher)
    with pytest.raises(AttributeError, match="no method 'head_forwad'.*did you mean 'head_forward'"):
        ctx.query_teacher("head_forwad", {})
    with pytest.raises(AttributeError, match="no method '_apply'"):
        ctx.query_teacher("_apply", None)
    with pytest.raises(RuntimeError, match="no teacher model"):
        DistillContext(None, None, None, 0).query_teacher("roi_forward")


# ------------------------------------------------------------------------------------------ mask inputs


def test_mask_inputs_take_levels_from_priors_and_check_the_taps():
    student, _ = toy_pair()
    images, targets, _ = toy_batch()
    out = student(images, targets, image_sizes=[(64, 96), (40, 70)])
    inp = mask_inputs(out, ["p3", "p4"], targets)
    assert inp.level_sizes == [8 * 12 * 2, 4 * 6 * 2] and inp.feat_hw == [(8, 12), (4, 6)]
    assert inp.image_sizes == [(64, 96), (40, 70)] and inp.targets is targets and len(inp.priors) == 2
    with pytest.raises(ValueError, match="1 taps"):
        mask_inputs(out, ["p3"])
    with pytest.raises(KeyError, match=r"no feature taps \['p5'\]"):
        mask_inputs(out, ["p3", "p5"])
    with pytest.raises(ValueError, match="FGFI mask needs the model's assignment"):
        mask_inputs(student(images), ["p3", "p4"], what="FGFI mask")


# -------------------------------------------------------------------------------------------- adapters


def test_adapter_init_normal_fmod2_scaled():
    torch.manual_seed(0)
    conv = make_adapter(64, 64, "conv3x3", bias=True, init="normal_fmod2")
    w = conv.weight.detach()
    assert w.abs().max() <= 2e-4 and 0.7e-4 < float(w.std()) < 1.0e-4  # normal cut at ±2 has std 0.88
    assert conv.bias.abs().max() > 1e-3  # the bias keeps PyTorch's default init
    relu = build_adapter(AdapterSpec("a", "conv3x3_relu", bias=True, init="normal_fmod2", init_std=1e-2), 4, 4)
    assert relu[0].weight.abs().max() <= 2e-2
    with pytest.raises(ValueError, match="unknown adapter init"):
        make_adapter(4, 4, init="xavier")


# ------------------------------------------------------------------------------------------- the config


def test_distill_config_sections_come_from_the_registry():
    cfg = DistillConfig(methods=["kd"], kd=KDConfig(temperature=4.0))
    assert cfg.kd.temperature == 4.0 and "tdkd" not in cfg.sections
    set_key(cfg, "tdkd.prob_weight", "10")  # a method without a section gets one from its defaults
    assert cfg.sections["tdkd"].prob_weight == 10.0 and cfg.tdkd.scale == "dynamic"
    assert "feat.student_taps" in all_keys(cfg) and "feat" not in cfg.sections  # listed, not created
    saved = to_dict(cfg)
    assert saved["sections"]["kd"]["temperature"] == 4.0 and saved["methods"] == ["kd"]
    with pytest.raises(KeyError, match="unknown detection distillation method 'kdd'.*did you mean 'kd'"):
        DistillConfig(kdd=KDConfig())
    with pytest.raises(ConfigError, match="unknown config key 'tdk.scale'.*did you mean 'tdkd.scale'"):
        set_key(cfg, "tdk.scale", "fixed")
    with pytest.raises(AttributeError, match="unknown detection distillation method 'nope'"):
        _ = cfg.nope
    student, teacher = toy_pair()  # the default feat taps include p5, which the toy does not have
    with pytest.raises(KeyError, match="student tap 'p5'.*declared: p3, p4"):
        build_distill_task(DistillConfig(methods=["feat"]), student, teacher)


def test_term_key_is_prefixed_by_method():
    assert Term("cls", "a", "b", feat_mse, method="kd").key == "kd.kd.cls"
