"""A toy task for the training-engine tests, importable and runnable as a script.

``python tests/_engine_toy.py --run-dir D [--resume] [--max-iters N] [--epochs E] [--step-sleep S]
[--ckpt-every-iters K] [--ckpt-every E] [--dump-rank-weights]`` (exit status 130 after SIGINT / SIGTERM) trains ``ToyTask`` on ``ToyDataset`` with
``Trainer`` (also under ``python -m torch.distributed.run --nproc_per_node=2``).

* ``ToyDataset``: ``n`` fixed samples ``x [8]``, label ``y`` in {0, 1}; per-sample augmentation noise is a
  pure function of ``(seed, epoch, index)`` (``set_epoch``). Items are ``(x, y, {"index": i})``.
* ``ToyTask``: ``student`` = Linear-BN-ReLU-Dropout-Linear, an ``adapter`` (trainable) and a frozen
  ``teacher`` held outside the registered children. Losses: ``task.cls`` (CE) and ``kd.toy.feat``
  (0.1 · MSE between the adapted student hidden features and the teacher's).
* ``make_evaluate(n)``: every rank scores its shard ``rank::world`` of an eval set and gathers
  ``(index, correct)`` pairs to rank 0, which reports ``acc``, ``n_seen`` and ``n_unique``.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detkd.config import ExperimentConfig, OptimConfig, ScheduleConfig, TrainConfig  # noqa: E402
from detkd.engine import dist  # noqa: E402
from detkd.engine.loop import Trainer  # noqa: E402
from detkd.errors import TrainingInterrupted  # noqa: E402

IN_DIM, HIDDEN = 8, 16


@dataclass
class ToyModelConfig:
    name: str = "engine_toy_mlp"
    hidden: int = HIDDEN
    dropout: float = 0.2


@dataclass
class ToyTrainConfig(TrainConfig):
    ckpt_every_iters: int = 0


class ToyStudent(nn.Module):
    def __init__(self, hidden: int = HIDDEN, dropout: float = 0.2):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(IN_DIM, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(dropout))
        self.fc = nn.Linear(hidden, 2)

    def forward(self, x):  # x [B, 8] -> (feat [B, H], logits [B, 2])
        feat = self.body(x)
        return feat, self.fc(feat)


def build_toy_student(*, hidden: int = HIDDEN, dropout: float = 0.2) -> ToyStudent:
    return ToyStudent(hidden, dropout)


class ToyDataset(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, seed: int = 0, noise: float = 0.3):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, IN_DIM, generator=g)  # [n, 8]
        self.y = (self.x[:, 0] + 0.5 * self.x[:, 1] > 0).long()  # [n]
        self.seed, self.noise, self.epoch = seed, noise, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_000 + self.epoch * 1000 + i)
        x = self.x[i] + self.noise * torch.randn(IN_DIM, generator=g)
        return x, self.y[i], {"index": torch.tensor(i)}


def collate(items):
    xs, ys, metas = zip(*items)
    return torch.stack(xs), torch.stack(ys), list(metas)


class ToyTask(nn.Module):
    def __init__(self, hidden: int = HIDDEN, step_sleep: float = 0.0, nan_calls: tuple[int, ...] = ()):
        super().__init__()
        self.student = ToyStudent(hidden)
        self.adapter = nn.Linear(hidden, hidden, bias=False)
        teacher = nn.Sequential(nn.Linear(IN_DIM, hidden), nn.Tanh()).eval().requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # not a registered child: no state_dict / optimizer / DDP
        self.step_sleep, self.nan_calls, self.calls = step_sleep, set(nan_calls), 0

    def _apply(self, fn, *args, **kwargs):  # keep the unregistered teacher on the student's device
        self.teacher._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def forward(self, batch):
        x, y, _meta = batch
        self.calls += 1
        if self.step_sleep:
            time.sleep(self.step_sleep)
        with torch.no_grad():
            t = self.teacher(x)  # [B, H]
        feat, logits = self.student(x)
        losses = {"task.cls": F.cross_entropy(logits, y), "kd.toy.feat": 0.1 * F.mse_loss(self.adapter(feat), t)}
        if self.calls in self.nan_calls:
            losses["task.cls"] = losses["task.cls"] * float("nan")
        return losses


def make_evaluate(n: int = 10):
    data = ToyDataset(n, seed=99, noise=0.0)

    def evaluate(student, epoch):
        idx = list(range(dist.rank(), n, dist.world_size()))
        device = next(student.parameters()).device
        _, logits = student(data.x[idx].to(device))
        correct = (logits.argmax(1).cpu() == data.y[idx]).tolist()
        parts = dist.gather_objects(list(zip(idx, correct)))
        if parts is None:
            return {}
        pairs = [p for part in parts for p in part]
        return {
            "acc": sum(c for _, c in pairs) / max(1, len(pairs)),
            "n_seen": len(pairs),
            "n_unique": len({i for i, _ in pairs}),
        }

    return evaluate


def make_config(run_dir: str | Path, epochs: int = 3, max_iters: int = 0, ckpt_every_iters: int = 0,
                batch_size: int = 4, **train) -> ExperimentConfig:
    run_dir = Path(run_dir)
    tc = ToyTrainConfig(epochs=epochs, batch_size=batch_size, seed=7, device="cpu", log_every=1,
                        max_iters=max_iters, ckpt_every_iters=ckpt_every_iters, out_dir=str(run_dir.parent),
                        **train)
    tc.tensorboard = True
    tc.progress = False
    return ExperimentConfig(
        name=run_dir.name,
        model=ToyModelConfig(),
        optim=OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4),
        sched=ScheduleConfig(name="step", warmup_iters=3, warmup_factor=0.1, milestones=[1.5], gamma=0.1),
        train=tc,
    )


def run(run_dir: str | Path, resume: bool = False, epochs: int = 3, max_iters: int = 0, step_sleep: float = 0.0,
        ckpt_every_iters: int = 0, ckpt_every: int = 1, n: int = 32, dump_rank_weights: bool = False) -> dict:
    torch.set_num_threads(1)
    cfg = make_config(run_dir, epochs=epochs, max_iters=max_iters, ckpt_every_iters=ckpt_every_iters,
                      ckpt_every=ckpt_every)
    torch.manual_seed(cfg.train.seed)
    task = ToyTask(step_sleep=step_sleep)
    trainer = Trainer(cfg, task, ToyDataset(n, seed=cfg.train.seed), evaluate=make_evaluate(), collate_fn=collate)
    summary = trainer.fit(resume=resume)
    if dump_rank_weights:
        torch.save(task.state_dict(), Path(run_dir) / f"weights_rank{dist.rank()}.pt")
    dist.cleanup()
    return summary


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--max-iters", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--step-sleep", type=float, default=0.0)
    ap.add_argument("--ckpt-every-iters", type=int, default=0)
    ap.add_argument("--ckpt-every", type=int, default=1, help="epochs; 0 = only iteration checkpoints")
    ap.add_argument("--dump-rank-weights", action="store_true")
    a = ap.parse_args(argv)
    try:
        _run_args(a)
    except TrainingInterrupted:  # Trainer printed where last.pt is and how to resume
        sys.exit(130)


def _run_args(a) -> None:
    run(a.run_dir, resume=a.resume, epochs=a.epochs, max_iters=a.max_iters, step_sleep=a.step_sleep,
        ckpt_every_iters=a.ckpt_every_iters, ckpt_every=a.ckpt_every, dump_rank_weights=a.dump_rank_weights)


if __name__ == "__main__":
    main()
