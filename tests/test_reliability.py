"""Issue 18 in the engine: run-dir policy, non-finite weights, signals, TensorBoard purge, config checks,
image reading and the TAR@FAR "reached" flag. CLI-level checks live in test_cli_errors.py."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _engine_toy as toy  # noqa: E402

from detkd.config import ConfigError, load_config, validate_config  # noqa: E402
from detkd.engine.checkpoint import (  # noqa: E402
    FORMAT, export_student, load_checkpoint, nonfinite_tensors, save_checkpoint,
)
from detkd.engine.logging import read_metrics  # noqa: E402
from detkd.engine.loop import NonFiniteLossError, Trainer  # noqa: E402
from detkd.errors import TrainingDiverged, UserError  # noqa: E402

TOY = Path(__file__).resolve().parent / "_engine_toy.py"


def fit(run_dir, resume=False, lr=None, task=None, warmup=3, **kw):
    cfg = toy.make_config(run_dir, **kw)
    cfg.sched.warmup_iters = warmup
    if lr is not None:
        cfg.optim.lr = lr
    torch.manual_seed(cfg.train.seed)
    return Trainer(cfg, task or toy.ToyTask(), toy.ToyDataset(32, seed=cfg.train.seed),
                   collate_fn=toy.collate).fit(resume=resume)


# ------------------------------------------------------------------------------------------- run dir


def test_existing_run_is_refused_then_overwritten(tmp_path):
    run = tmp_path / "r"
    fit(run, epochs=1, max_iters=3)
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match=r"already holds a run \(last.pt, final.pt, summary.json, metrics.jsonl\)"
                                        r".*--resume.*--overwrite"):
        fit(run, epochs=1, max_iters=2)
    assert (run / "metrics.jsonl").read_text() == before  # nothing truncated
    s = fit(run, epochs=1, max_iters=2, overwrite=True)
    assert s["global_step"] == 2 and [r["step"] for r in read_metrics(run)] == [1, 2]
    with pytest.raises(UserError, match="exclude each other"):
        fit(run, epochs=1, resume=True, overwrite=True)


def test_resume_refuses_changed_config_unless_allowed(tmp_path):
    run = tmp_path / "r"
    fit(run, epochs=2, max_iters=3)
    with pytest.raises(UserError, match=r"train.batch_size 4 -> 8.*--allow-changed train.batch_size") as e:
        fit(run, epochs=2, resume=True, batch_size=8)
    assert e.value.key == "train.batch_size"
    with pytest.raises(UserError, match=r"optim.lr 0.1 -> 0.05"):
        fit(run, epochs=2, resume=True, lr=0.05)
    # max_iters is how long this session runs, not what it trains: free to change
    s = fit(run, epochs=2, resume=True, max_iters=5)
    assert s["global_step"] == 5
    s = fit(run, epochs=2, resume=True, lr=0.05, allow_changed=["optim"])
    assert s["global_step"] == 16
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 0.05


def test_read_only_run_dir_names_out_dir(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write to read-only directories")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UserError, match=r"cannot write to the run directory .*ro/r.*train.out_dir"):
            fit(ro / "r", epochs=1)
    finally:
        ro.chmod(0o700)


# ---------------------------------------------------------------------------------------- divergence


def test_diverging_run_stops_and_leaves_no_nonfinite_checkpoint(tmp_path):
    """lr=10 without warmup makes the toy's weights non-finite at step 8; checkpoints every 2 iterations."""
    run = tmp_path / "div"
    with pytest.raises(TrainingDiverged, match="the weights became non-finite at global step 8") as e:
        fit(run, epochs=3, lr=10.0, ckpt_every_iters=2, warmup=0)
    msg = str(e.value)
    assert "\n" not in msg and f"global step {e.value.step}" in msg
    assert "optim.lr" in msg and "last finite checkpoint" in msg and "--resume" in msg
    assert not (run / "final.pt").exists()
    last = load_checkpoint(run / "last.pt")
    assert 0 < last["global_step"] < e.value.step
    assert nonfinite_tensors({k: last[k] for k in ("task", "optimizer")}) == []
    # the kept state resumes, at the new learning rate once the change is allowed
    fit(run, epochs=3, lr=0.01, ckpt_every_iters=2, warmup=0, resume=True, allow_changed=["optim.lr"],
        max_iters=last["global_step"] + 1)
    row = read_metrics(run)[-1]
    assert row["step"] == last["global_step"] + 1 and row["lr"] == pytest.approx(0.01)


def test_persistent_nonfinite_loss_is_a_divergence(tmp_path):
    task = toy.ToyTask(nan_calls=tuple(range(1, 50)))
    with pytest.raises(NonFiniteLossError, match="optim.lr.*no checkpoint was written") as e:
        fit(tmp_path / "nan", epochs=1, task=task, max_nonfinite=3)
    assert isinstance(e.value, TrainingDiverged) and isinstance(e.value, FloatingPointError)


def test_save_checkpoint_and_export_refuse_nonfinite_tensors(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"task": {"student.w": torch.ones(2)}})
    with pytest.raises(TrainingDiverged, match=r"refusing to write .*last.pt: 1 tensors hold NaN/inf \(e.g. "
                                               r"task.student.w\)"):
        save_checkpoint(path, {"task": {"student.w": torch.tensor([1.0, float("nan")])}})
    assert torch.equal(load_checkpoint(path)["task"]["student.w"], torch.ones(2))  # old file kept
    bad = {"format": FORMAT, "task": {"student.w": torch.tensor([float("inf")]), "student.n": torch.tensor([3])}}
    save_checkpoint(tmp_path / "bad.pt", bad, check_finite=False)
    with pytest.raises(TrainingDiverged, match=r"bad.pt: refusing to export: 1 student tensors hold NaN/inf"):
        export_student(tmp_path / "bad.pt", tmp_path / "s.safetensors")
    assert not (tmp_path / "s.safetensors").exists()


# ------------------------------------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_finishes_step_saves_last_and_exits_130(tmp_path, sig):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = [sys.executable, str(TOY), "--run-dir", str(b_dir), "--epochs", "2", "--step-sleep", "0.05"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    metrics = b_dir / "metrics.jsonl"
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        if proc.poll() is not None:
            pytest.fail(f"toy run ended early: {proc.stderr.read().decode()[-2000:]}")
        assert time.time() < deadline, "no training rows within 120 s"
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert f"interrupted by {signal.Signals(sig).name}" in err and "--resume" in err
    ckpt = load_checkpoint(b_dir / "last.pt")
    steps = [r["step"] for r in read_metrics(b_dir)]
    assert ckpt["global_step"] == steps[-1] < 16  # the step in progress finished and was saved
    assert not (b_dir / "final.pt").exists()
    toy.run(b_dir, epochs=2, resume=True)
    toy.run(a_dir, epochs=2)
    wa, wb = load_checkpoint(a_dir / "final.pt")["task"], load_checkpoint(b_dir / "final.pt")["task"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # exact resume after the interrupt


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="no gloo backend")
def test_ctrl_c_under_torchrun_saves_last_on_every_rank_agreement(tmp_path):
    """Ctrl-C in a terminal signals the whole process group (torchrun and both ranks; torchrun forwards it
    again): the ranks agree to stop after the same step, rank 0 writes last.pt and says how to resume."""
    run_dir = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(TOY),
           "--run-dir", str(run_dir), "--epochs", "2", "--step-sleep", "0.1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    metrics, deadline = run_dir / "metrics.jsonl", time.time() + 240
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        if proc.poll() is not None:
            pytest.fail(f"torchrun ended early: {proc.stderr.read().decode()[-3000:]}")
        assert time.time() < deadline, "no training rows within 240 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    err = err.decode()
    assert proc.returncode != 0  # torchrun reports its own signal exit
    assert err.count("[detkd] interrupted by SIGINT") == 1 and "--resume" in err, err[-3000:]
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert len(ckpt["rng"]) == 2 and ckpt["global_step"] == read_metrics(run_dir)[-1]["step"] < 8
    assert not (run_dir / "final.pt").exists()


# --------------------------------------------------------------------------------------- TensorBoard


def test_tensorboard_has_each_step_once_after_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    fit(run, epochs=2, max_iters=3)  # last.pt at step 3
    shutil.copy(run / "last.pt", tmp_path / "step3.pt")
    time.sleep(1.1)  # event files sort by their creation second (then by a per-process counter)
    fit(run, epochs=2, max_iters=5, resume=True)  # logs steps 4, 5 (and saves last.pt at 5)
    shutil.copy(tmp_path / "step3.pt", run / "last.pt")  # as if killed after step 5 with last.pt at 3
    time.sleep(1.1)
    fit(run, epochs=2, resume=True)  # steps 4, 5 again, then to 16
    ea = EventAccumulator(str(run / "tb"))
    ea.Reload()
    steps = [e.step for e in ea.Scalars("train/loss")]
    assert steps == list(range(1, 17))


# -------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("override,key", [
    ("train.epochs=-1", "train.epochs"), ("train.batch_size=0", "train.batch_size"),
    ("optim.lr=0", "optim.lr"), ("optim.lr=nan", "optim.lr"), ("train.num_workers=-2", "train.num_workers"),
    ("sched.warmup_factor=0", "sched.warmup_factor"), ("data.img_size=0", "data.img_size"),
    ("train.device=gpu", "train.device"),
])
def test_range_checks_name_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}=.*: must be") as e:
        load_config("retinaface/mnet025_synthfaces", [override])
    assert e.value.key == key and isinstance(e.value, UserError)


def test_every_shipped_config_passes_validation():
    from detkd.config import list_configs

    for name in list_configs():
        validate_config(load_config(name))


def test_format_config_lists_every_key():
    from detkd.config import all_keys, format_config

    cfg = load_config("retinaface/mnet025_synthfaces")
    text = format_config(cfg)
    for key in all_keys(cfg):
        assert key in text
    assert "train.batch_size = " in text and "(int)" in text


# -------------------------------------------------------------------------------------------- images


def test_truncated_jpeg_warns_once_or_fails_strict(tmp_path, caplog):
    import cv2

    from detkd.data import image as image_mod

    img = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
    cv2.imwrite(str(tmp_path / "ok.jpg"), img)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "tail.jpg").write_bytes(data + b"\0" * 5000)  # data after the end marker is not a truncation
    assert not image_mod.jpeg_is_truncated(tmp_path / "ok.jpg")
    assert not image_mod.jpeg_is_truncated(tmp_path / "tail.jpg")
    assert image_mod.jpeg_is_truncated(tmp_path / "cut.jpg")
    with caplog.at_level("WARNING", logger="detkd.data.image"):
        assert image_mod.read_image(tmp_path / "cut.jpg").shape == (64, 64, 3)
        image_mod.read_image(tmp_path / "cut.jpg")
        image_mod.read_image(tmp_path / "ok.jpg")
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "cut.jpg: truncated JPEG" in warned[0]
    with pytest.raises(image_mod.TruncatedImageError, match="cut.jpg: truncated JPEG"):
        image_mod.read_image(tmp_path / "cut.jpg", strict=True)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        image_mod.read_image(tmp_path)


# ------------------------------------------------------------------------------------- verification


def test_collapsed_model_tar_is_not_reached():
    from detkd.eval.verification import evaluate_pairs, format_tar, summary

    issame = np.tile([True, False], 30)
    e = np.ones((60, 8)) / np.sqrt(8)  # every embedding equal: every pair is accepted
    r = evaluate_pairs(e, e, issame)
    assert r["tar_far_1e-2"] == 1.0 and r["tar_far_1e-2_far"] == 1.0 and r["tar_far_1e-2_reached"] is False
    assert format_tar(r, "tar_far_1e-2") == "TAR@FAR=1e-2 not reached (FAR reached 1.000, TAR there 100.00)"
    assert summary(r)["tar_far_1e-3_reached"] is False
    rng = np.random.default_rng(0)
    a = rng.normal(size=(600, 32))
    same = np.tile([True, False], 300)
    b = np.where(same[:, None], a + 0.5 * rng.normal(size=a.shape), rng.normal(size=a.shape))
    a, b = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    r = evaluate_pairs(a, b, same)
    assert r["tar_far_1e-2_reached"] and r["tar_far_1e-2_far"] <= 1e-2 + 1 / 30
    assert format_tar(r, "tar_far_1e-2").startswith("TAR@FAR=1e-2 100.00 (FAR 0.0")
