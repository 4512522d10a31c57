"""Training engine: schedules, optimizer groups, checkpoints, non-finite guard, exact resume, export."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _engine_toy as toy  # noqa: E402
from detkd.config import OptimConfig, ScheduleConfig  # noqa: E402
from detkd.models.weights import card_path, load_model_file, read_card  # noqa: E402
from detkd.engine.checkpoint import (  # noqa: E402
    check_no_teacher,
    export_student,
    find_resume,
    load_checkpoint,
    load_student_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from detkd.engine.logging import read_metrics  # noqa: E402
from detkd.errors import UserError  # noqa: E402
from detkd.engine.loop import NonFiniteLossError, ResumableBatchSampler, Trainer, to_device  # noqa: E402
from detkd.engine.optim import build_optimizer, build_scheduler, lr_factor, milestone_iters  # noqa: E402

TOY = Path(__file__).resolve().parent / "_engine_toy.py"


def _lrs(sched_cfg, ipe, epochs, n):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sch = build_scheduler(sched_cfg, opt, ipe, epochs)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return out


# ------------------------------------------------------------------------------------------ schedules


def test_warmup_is_linear_from_factor_to_one():
    cfg = ScheduleConfig(name="constant", warmup_iters=4, warmup_factor=0.2)
    lrs = _lrs(cfg, 10, 1, 6)
    assert lrs == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


def test_step_milestones_at_fractional_epochs():
    cfg = ScheduleConfig(name="step", milestones=[1.5, 2.25], gamma=0.1)
    assert milestone_iters(cfg.milestones, 4) == [6, 9]
    lrs = _lrs(cfg, 4, 3, 12)
    assert lrs[:6] == pytest.approx([1.0] * 6)
    assert lrs[6:9] == pytest.approx([0.1] * 3)
    assert lrs[9:] == pytest.approx([0.01] * 3)


def test_step_schedule_of_the_tdkd_recipe():
    cfg = ScheduleConfig(name="step", milestones=[55, 68], gamma=0.1)
    assert lr_factor(cfg, 55 * 403 - 1, 403, 80) == 1.0
    assert lr_factor(cfg, 55 * 403, 403, 80) == pytest.approx(0.1)
    assert lr_factor(cfg, 68 * 403, 403, 80) == pytest.approx(0.01)


def test_cosine_reaches_min_factor_and_warmup_multiplies():
    cfg = ScheduleConfig(name="cosine", min_lr_factor=0.05)
    assert lr_factor(cfg, 0, 10, 2) == pytest.approx(1.0)
    assert lr_factor(cfg, 10, 10, 2) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_factor(cfg, 20, 10, 2) == pytest.approx(0.05)
    assert lr_factor(cfg, 25, 10, 2) == pytest.approx(0.05)
    warm = ScheduleConfig(name="cosine", warmup_iters=10, warmup_factor=0.0)
    assert lr_factor(warm, 5, 10, 2) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 5 / 20)))
    short = ScheduleConfig(name="cosine", min_lr_factor=0.05, total_iters=12)  # decays over 12, not 2 x 10
    assert lr_factor(short, 6, 10, 2) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_factor(short, 12, 10, 2) == pytest.approx(0.05)


def test_unknown_schedule_and_optimizer_names_fail_clearly():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="sched.name='poly'"):
        build_scheduler(SimpleNamespace(name="poly", warmup_iters=0), opt, 10, 1)
    with pytest.raises(ValueError, match="optim.name='lion'"):
        build_optimizer(SimpleNamespace(name="lion", lr=0.1), nn.Linear(2, 2))


def test_scheduler_state_dict_loads_with_weights_only(tmp_path):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sch = build_scheduler(ScheduleConfig(name="cosine"), opt, 5, 2)
    opt.step()
    sch.step()
    save_checkpoint(tmp_path / "s.pt", {"scheduler": sch.state_dict()})
    assert load_checkpoint(tmp_path / "s.pt")["scheduler"]["last_epoch"] == 1


# ----------------------------------------------------------------------------------------- optimizer


def test_sgd_weight_decay_on_all_trainable_params_and_frozen_excluded():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
    net[2].requires_grad_(False)  # e.g. a frozen TDKD projection
    opt = build_optimizer(OptimConfig(name="sgd", lr=0.02, nesterov=True), net)
    params = [p for g in opt.param_groups for p in g["params"]]
    assert len(params) == 4 and all(p.requires_grad for p in params)
    assert all(g["weight_decay"] == 5e-4 and g["momentum"] == 0.9 and g["nesterov"] for g in opt.param_groups)
    assert {g["name"] for g in opt.param_groups} == {"weights", "biases"}


def test_bias_lr_mult_and_bias_weight_decay_for_fgfi():
    cfg = OptimConfig(lr=0.003, bias_lr_mult=2.0, bias_weight_decay=0.0)
    opt = build_optimizer(cfg, nn.Linear(3, 2))
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["biases"]["lr"] == pytest.approx(0.006) and groups["biases"]["weight_decay"] == 0.0
    assert groups["weights"]["lr"] == pytest.approx(0.003) and groups["weights"]["weight_decay"] == 5e-4


def test_adamw_and_no_trainable_params():
    opt = build_optimizer(OptimConfig(name="adamw", lr=1e-3, weight_decay=0.05, betas=(0.8, 0.9)), nn.Linear(2, 2))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.8, 0.9)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(OptimConfig(), nn.Linear(2, 2).requires_grad_(False))


# ------------------------------------------------------------------------------------ data / devices


def test_sampler_is_pure_in_seed_epoch_shards_disjoint_and_skips():
    a = ResumableBatchSampler(10, 3, seed=5)
    a.set_epoch(2)
    b = ResumableBatchSampler(10, 3, seed=5)
    b.set_epoch(2)
    assert list(a) == list(b) and len(a) == 4
    b.set_epoch(3)
    assert list(a) != list(b)
    a.set_epoch(2, start_batch=2)
    full = ResumableBatchSampler(10, 3, seed=5)
    full.set_epoch(2)
    assert list(a) == list(full)[2:] and len(a) == 2
    shards = [ResumableBatchSampler(9, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    idx = [s.indices() for s in shards]
    assert len(idx[0]) == len(idx[1]) == 5  # padded to 10
    assert set(idx[0]) | set(idx[1]) == set(range(9))


def test_to_device_recurses_into_containers():
    batch = (torch.zeros(2), [torch.ones(1), "x"], {"a": torch.zeros(1), "b": 3})
    out = to_device(batch, torch.device("cpu"))
    assert isinstance(out, tuple) and out[1][1] == "x" and out[2]["b"] == 3 and torch.equal(out[2]["a"], torch.zeros(1))


# ------------------------------------------------------------------------------------------ checkpoints


def test_atomic_save_leaves_old_file_and_no_partial(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"w": torch.ones(3)})
    with pytest.raises(Exception):
        save_checkpoint(path, {"w": torch.zeros(1000), "bad": lambda: None})  # fails while pickling
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    save_checkpoint(tmp_path / "ok.pt", {"w": torch.ones(100)})
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"obj": SimpleNamespace(a=1)}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="pickled.pt: refusing to unpickle.*import-weights"):
        load_checkpoint(tmp_path / "pickled.pt")
    assert load_checkpoint(tmp_path / "pickled.pt", trusted=True)["obj"].a == 1
    # files that are no torch checkpoint at all are not called pickles of Python objects (issue 18)
    from detkd.models.weights import load_state_file

    (tmp_path / "notes.pt").write_text("not a directory\n")  # weights_only unpickler: "Unsupported operand"
    (tmp_path / "hello.pth").write_text("hello, not a checkpoint\n")  # torch's legacy reader: KeyError
    for name in ("notes.pt", "hello.pth"):
        for load in (load_checkpoint, load_state_file):
            with pytest.raises(ValueError, match=rf"{name}: not a torch checkpoint \(\w+Error: [^\n]*\)$"):
                load(tmp_path / name)
    with pytest.raises(ValueError, match="pickled.pt: refusing to unpickle"):
        load_state_file(tmp_path / "pickled.pt")


def test_rng_state_roundtrip_through_weights_only_file(tmp_path):
    import random

    import numpy as np

    save_checkpoint(tmp_path / "r.pt", {"rng": rng_state()})
    a = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_teacher_outside_children_never_saved_and_registered_teacher_rejected(tmp_path):
    task = toy.ToyTask()
    assert not [k for k in task.state_dict() if "teacher" in k]
    toy.run(tmp_path / "r", epochs=1, max_iters=2)
    state = load_checkpoint(tmp_path / "r" / "last.pt")
    assert state["task"] and not [k for k in state["task"] if "teacher" in k]
    check_no_teacher(state["task"])

    bad = toy.ToyTask()
    object.__delattr__(bad, "teacher")
    bad.teacher = nn.Linear(2, 2)  # registered as a child: would leak into state_dict, optimizer and DDP
    with pytest.raises(ValueError, match="teacher"):
        Trainer(toy.make_config(tmp_path / "bad", epochs=1), bad, toy.ToyDataset(8), collate_fn=toy.collate).fit()


# --------------------------------------------------------------------------------- non-finite guard


def _trainer(tmp_path, task, **train):
    cfg = toy.make_config(tmp_path / "nf", epochs=1, **train)
    tr = Trainer(cfg, task, toy.ToyDataset(16), collate_fn=toy.collate)
    tr._setup()
    return tr


def test_nonfinite_step_is_skipped_then_aborts_after_max_consecutive(tmp_path):
    torch.manual_seed(0)
    task = toy.ToyTask(nan_calls=(1, 3, 4, 5))
    tr = _trainer(tmp_path, task, max_nonfinite=3, clip_grad=1.0)
    batch = toy.collate([tr.train_set[i] for i in range(4)])
    before = {k: v.clone() for k, v in task.state_dict().items() if v.is_floating_point()}
    assert tr.train_step(batch) is None  # call 1: NaN
    params_after = {k: v for k, v in task.named_parameters()}
    assert all(torch.equal(before[k], params_after[k]) for k in params_after)
    assert tr.nonfinite == {"consecutive": 1, "total": 1}
    out = tr.train_step(batch)  # call 2: fine
    assert out is not None and set(out) == {"task.cls", "kd.toy.feat"}
    assert not torch.equal(before["student.fc.weight"], task.student.fc.weight)
    assert tr.nonfinite["consecutive"] == 0
    assert tr.train_step(batch) is None and tr.train_step(batch) is None  # calls 3, 4
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive.*max_nonfinite=3.*task\.cls"):
        tr.train_step(batch)  # call 5


def test_fit_counts_skipped_steps(tmp_path):
    torch.manual_seed(0)
    task = toy.ToyTask(nan_calls=(2,))
    cfg = toy.make_config(tmp_path / "fit", epochs=1)
    summary = Trainer(cfg, task, toy.ToyDataset(16), collate_fn=toy.collate).fit()
    assert summary["nonfinite_skipped"] == 1 and summary["global_step"] == 4
    assert [r["step"] for r in read_metrics(tmp_path / "fit")] == [1, 3, 4]


# ----------------------------------------------------------------------------------------- exact resume


def test_resume_after_sigkill_is_exact(tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    toy.run(a_dir, epochs=3)  # uninterrupted: 8 iterations per epoch
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # checkpoints only every 5 iterations (8 per epoch): every checkpoint before the end is mid-epoch
    args = [sys.executable, str(TOY), "--run-dir", str(b_dir), "--epochs", "3", "--ckpt-every-iters", "5",
            "--ckpt-every", "0", "--step-sleep", "0.1"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while find_resume(b_dir) is None:
        if proc.poll() is not None:
            pytest.fail(f"toy run ended before its first checkpoint: {proc.stderr.read().decode()[-2000:]}")
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    ckpt = load_checkpoint(b_dir / "last.pt")
    assert 0 < ckpt["step_in_epoch"] < 8 and ckpt["global_step"] < 24  # killed mid-epoch
    assert not (b_dir / "final.pt").exists()
    toy.run(b_dir, epochs=3, ckpt_every_iters=5, ckpt_every=0, resume=True)

    keys = ("step", "epoch", "lr", "loss", "task.cls", "kd.toy.feat")
    rows_a = [tuple(r[k] for k in keys) for r in read_metrics(a_dir)]
    rows_b = [tuple(r[k] for k in keys) for r in read_metrics(b_dir)]
    assert len(rows_a) == 24 and rows_b == rows_a  # bitwise: floats round-trip through JSON
    wa, wb = load_checkpoint(a_dir / "final.pt")["task"], load_checkpoint(b_dir / "final.pt")["task"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ev_a, ev_b = read_metrics(a_dir, "eval"), read_metrics(b_dir, "eval")
    assert [r["acc"] for r in ev_a] == [r["acc"] for r in ev_b]


def test_resume_of_finished_run_and_missing_checkpoint(tmp_path):
    s1 = toy.run(tmp_path / "r", epochs=1, max_iters=3)
    assert s1["stopped_early"] and s1["global_step"] == 3
    assert load_checkpoint(tmp_path / "r" / "last.pt")["step_in_epoch"] == 3
    s2 = toy.run(tmp_path / "r", epochs=1, resume=True)  # continues to the end of the epoch
    assert s2["global_step"] == 8 and not s2["stopped_early"]
    assert [r["step"] for r in read_metrics(tmp_path / "r")] == list(range(1, 9))
    s3 = toy.run(tmp_path / "fresh", epochs=1, resume=True)  # nothing to resume: starts fresh
    assert s3["global_step"] == 8


# --------------------------------------------------------------------------------------------- export


def test_export_writes_student_safetensors_and_card(tmp_path, monkeypatch):
    toy.run(tmp_path / "run", epochs=1, max_iters=2)
    out = export_student(tmp_path / "run", tmp_path / "exp" / "student.safetensors", {"note": "toy"})
    assert out.is_file() and card_path(out) == tmp_path / "exp" / "student.json"
    sd, card = load_student_weights(out), read_card(out)
    final = load_checkpoint(tmp_path / "run" / "final.pt")["task"]
    assert set(sd) == {k[len("student."):] for k in final if k.startswith("student.")}
    assert all(torch.equal(sd[k], final["student." + k]) for k in sd)
    assert card["format"] == "detkd-model/2" and card["note"] == "toy" and card["source"]["global_step"] == 2
    assert card["model"] == {"name": "engine_toy_mlp", "hidden": 16, "dropout": 0.2}
    assert "model_config_type" not in card  # no Python import path in a card
    assert json.loads(card_path(out).read_text()) == card
    assert set(load_student_weights(tmp_path / "run")) == set(sd)

    # the card rebuilds the student through the registry (by name only)
    from detkd import registry

    monkeypatch.setattr(registry, "load_all", lambda: None)
    monkeypatch.setitem(registry.MODELS, "engine_toy_mlp", toy.build_toy_student)
    net, _ = load_model_file(out)
    assert torch.equal(net.fc.weight, sd["fc.weight"])

    # --half: float16 on disk, upcast to the float32 model on load, the card says so
    half = export_student(tmp_path / "run", tmp_path / "exp" / "half.safetensors", half=True)
    hsd = load_student_weights(half)
    assert all(v.dtype == torch.float16 for v in hsd.values() if v.is_floating_point())
    assert read_card(half)["dtype"] == "float16" and half.stat().st_size < out.stat().st_size
    hnet, _ = load_model_file(half)
    assert hnet.fc.weight.dtype == torch.float32 and torch.equal(hnet.fc.weight, sd["fc.weight"].half().float())


def test_export_rejects_non_detkd_checkpoint(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="plain.pt.*not a detkd training checkpoint"):
        export_student(tmp_path / "plain.pt", tmp_path / "s.safetensors")
    with pytest.raises(FileNotFoundError, match="neither final.pt nor last.pt"):
        export_student(tmp_path, tmp_path / "s.safetensors")


def test_init_weights_from_export_and_mismatch_error(tmp_path):
    toy.run(tmp_path / "run", epochs=1, max_iters=2)
    out = export_student(tmp_path / "run", tmp_path / "student.safetensors")
    sd = load_student_weights(out)
    cfg = toy.make_config(tmp_path / "init", epochs=1, init_weights=str(out))
    task = toy.ToyTask()
    tr = Trainer(cfg, task, toy.ToyDataset(8), collate_fn=toy.collate)
    tr._setup()
    tr._load_init_weights(cfg.train.init_weights)
    assert all(torch.equal(task.student.state_dict()[k], sd[k]) for k in sd)

    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(3, 3)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(UserError, match=r"train.init_weights=.*wrong.safetensors.*expected .*engine_toy_mlp.*"
                                        r"1 shape mismatches"):
        tr._load_init_weights(str(tmp_path / "wrong.safetensors"))


def test_bad_task_output_and_empty_dataset_fail_clearly(tmp_path):
    class NoDict(toy.ToyTask):
        def forward(self, batch):
            return sum(super().forward(batch).values())

    cfg = toy.make_config(tmp_path / "bad", epochs=1)
    with pytest.raises(TypeError, match="non-empty dict of loss tensors, got Tensor"):
        Trainer(cfg, NoDict(), toy.ToyDataset(8), collate_fn=toy.collate).fit()
    with pytest.raises(ValueError, match="dataset is empty"):
        Trainer(cfg, toy.ToyTask(), toy.ToyDataset(0), collate_fn=toy.collate).fit()
    with pytest.raises(AttributeError, match="no `student`"):
        Trainer(cfg, nn.Linear(2, 2), toy.ToyDataset(8))
