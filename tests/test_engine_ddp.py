"""Two-process DDP (gloo, CPU) through ``python -m torch.distributed.run`` on the toy task."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from detkd.engine.checkpoint import load_checkpoint
from detkd.engine.logging import read_metrics

TOY = Path(__file__).resolve().parent / "_engine_toy.py"


@pytest.mark.skipif(not tdist.is_available() or not tdist.is_gloo_available(), reason="no gloo backend")
def test_ddp_two_ranks_gloo(tmp_path):
    run_dir = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(TOY),
           "--run-dir", str(run_dir), "--epochs", "2", "--max-iters", "6", "--dump-rank-weights"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]

    # both ranks hold identical trained weights
    w0 = torch.load(run_dir / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(run_dir / "weights_rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    final = load_checkpoint(run_dir / "final.pt")
    assert final["world_size"] == 2 and final["global_step"] == 6
    assert all(torch.equal(final["task"][k], w0[k]) for k in w0)
    torch.manual_seed(7)  # the toy's initial weights differ from the trained ones
    sys.path.insert(0, str(TOY.parent))
    import _engine_toy as toy

    init = toy.ToyTask().state_dict()
    assert not torch.equal(init["student.fc.weight"], w0["student.fc.weight"])

    # only rank 0 logs / checkpoints: each step once, one TensorBoard event file, RNG of both ranks saved
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in rows] == [0, 0, 0, 0, 1, 1]  # 32 samples / 2 ranks / batch 4 = 4 iters/epoch
    assert len(list((run_dir / "tb").iterdir())) == 1
    assert len(load_checkpoint(run_dir / "last.pt")["rng"]) == 2

    # the gathered evaluation saw every eval sample exactly once
    ev = read_metrics(run_dir, "eval")
    assert len(ev) == 1 and ev[0]["n_seen"] == 10 and ev[0]["n_unique"] == 10
