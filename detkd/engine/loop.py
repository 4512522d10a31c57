"""The training loop: ``Trainer(cfg, task, train_set, evaluate=None, collate_fn=None).fit(resume=False)``.

* A **task** is an ``nn.Module`` holding everything trainable (``task.student`` + adapters);
  ``task(batch) -> dict[str, Tensor]`` of already-weighted loss terms; the objective is their sum. A teacher
  lives outside the task's registered children (never in ``state_dict``, the optimizer or DDP).
* Data order is a pure function of ``(seed, epoch)`` (``ResumableBatchSampler``); under DDP rank ``r`` takes
  positions ``r, r + W, ...`` of the epoch's permutation (padded to a multiple of ``W``). Datasets with
  ``set_epoch`` get it called each epoch, so augmentation can be a pure function of ``(seed, epoch, index)``.
* Exact resume: ``last.pt`` stores task/optimizer/scheduler/scaler state, counters and every rank's RNG
  state; a resumed run skips the batches already trained in the interrupted epoch, so its per-step losses
  and final weights equal those of an uninterrupted run (bitwise on CPU with ``num_workers=0``).
* One iteration: batch -> device, forward under autocast (CUDA + ``cfg.train.amp``), non-finite guard (all
  ranks agree; the step is skipped, and ``max_nonfinite`` consecutive skips abort), backward (GradScaler for
  fp16), optional clipping, optimizer step, scheduler step (per iteration; skipped steps advance it too).
* Evaluation ``evaluate(student, epoch) -> dict`` runs on every rank (it may shard and gather with
  ``dist.gather_objects``) under ``no_grad`` in eval mode with the training RNG saved and restored; rank 0
  logs its result. Outputs in the run dir (rank 0): ``config.json``, ``metrics.jsonl``, ``tb/``, ``last.pt``,
  ``final.pt``, ``summary.json``.

Optional ``TrainConfig`` fields read with ``getattr`` (defaults in brackets): ``ckpt_every_iters`` [0],
``resume`` [False], ``drop_last`` [False], ``amp_dtype`` ["auto": bf16 where supported, else fp16],
``find_unused_parameters`` [False], ``sync_bn`` [False], ``tensorboard`` [True], ``progress`` [True],
``overwrite`` [False], ``allow_changed`` [[]].

Reliability rules (``docs/reliability.md``):

* ``fit`` refuses a run dir that already holds a run unless it resumes or ``overwrite`` is set, and a resume
  whose config differs from the saved ``config.json`` outside ``allow_changed`` (``detkd.engine.rundir``).
* After every step the weights (parameters and floating buffers) are checked; once one is non-finite the run
  stops at once with ``TrainingDiverged`` naming the step and likely cause, and ``last.pt`` keeps the last
  finite state (``save_checkpoint`` never writes a non-finite tensor).
* SIGINT / SIGTERM (also under torchrun: the ranks agree through an all-reduce) let the current step finish,
  then ``last.pt`` is written atomically and ``TrainingInterrupted`` is raised (the CLI exits 130). In a
  single process a second SIGINT stops at once without saving.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler

from detkd.engine import dist
from detkd.errors import TrainingDiverged, TrainingInterrupted
from detkd.engine.checkpoint import (
    FORMAT,
    check_no_teacher,
    find_resume,
    load_checkpoint,
    load_weights_into,
    nonfinite_tensors,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json_atomic,
)
from detkd.engine.logging import MetricsLogger, progress
from detkd.engine.optim import build_optimizer, build_scheduler
from detkd.engine.rundir import check_run_dir, clear_run_dir

__all__ = ["Trainer", "ResumableBatchSampler", "to_device", "select_device", "seed_everything", "NonFiniteLossError"]


class NonFiniteLossError(TrainingDiverged, FloatingPointError):
    """The loss stayed non-finite for ``train.max_nonfinite`` consecutive steps."""


_DIVERGENCE_HINT = ("likely cause: a learning rate (optim.lr) or loss weights too large for this model; lower "
                    "them or clip gradients (train.clip_grad)")


# ------------------------------------------------------------------------------------------- helpers


def select_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; ``cuda`` -> ``cuda:<local_rank>``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name!r} but CUDA is not available")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors nested in tuples / lists / dicts (and namedtuples) to ``device``; other values unchanged."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=device.type == "cuda")
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def _epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7919 + salt * 104_729) % (2**63 - 1)


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices; the epoch's order is a pure function of ``(seed, epoch)``.

    Under ``world_size`` ranks, the permutation is padded (wrapping around) to a multiple of ``world_size``
    and rank ``r`` takes every ``world_size``-th index from position ``r``. ``set_epoch(epoch, start_batch)``
    skips the first ``start_batch`` batches (resume inside an epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False):
        if n <= 0:
            raise ValueError("ResumableBatchSampler: the dataset is empty")
        if batch_size <= 0:
            raise ValueError(f"ResumableBatchSampler: batch_size must be > 0, got {batch_size}")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start_batch = 0, 0
        self.per_rank = math.ceil(n / world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def indices(self) -> list[int]:
        """This rank's indices for the current epoch (all of them, before skipping)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        total = self.per_rank * self.world_size
        perm = (perm * math.ceil(total / self.n))[:total]
        return perm[self.rank :: self.world_size]

    def num_batches(self) -> int:
        return self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches() - self.start_batch

    def __iter__(self):
        idx = self.indices()
        for b in range(self.start_batch, self.num_batches()):
            yield idx[b * self.batch_size : (b + 1) * self.batch_size]


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    seed = info.seed % 2**32  # derived from the loader's seeded generator
    random.seed(seed)
    np.random.seed(seed)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (it saves last.pt)


# -------------------------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(self, cfg: Any, task: nn.Module, train_set: Any, evaluate: Callable | None = None,
                 collate_fn: Callable | None = None, run_dir: str | Path | None = None):
        if not hasattr(task, "student"):
            raise AttributeError(f"{type(task).__name__} has no `student` attribute (the model to export)")
        self.cfg, self.task, self.train_set = cfg, task, train_set
        self.evaluate_fn, self.collate_fn = evaluate, collate_fn
        self.run_dir = Path(run_dir) if run_dir is not None else Path(cfg.run_dir)
        tc = cfg.train
        self.ckpt_every_iters = int(tc.ckpt_every_iters)
        self.drop_last = bool(tc.drop_last)
        self.amp_dtype_name = str(tc.amp_dtype)
        self.find_unused = bool(tc.find_unused_parameters)
        self.sync_bn = bool(tc.sync_bn)
        self.use_tb = bool(tc.tensorboard)
        self.show_progress = bool(tc.progress)
        self.overwrite = bool(getattr(tc, "overwrite", False))
        self.allow_changed = list(getattr(tc, "allow_changed", None) or [])
        self._signal: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self._saved_step: int | None = None

    # ------------------------------------------------------------------------------------------ setup

    def _setup(self) -> None:
        tc = self.cfg.train
        want = tc.device if tc.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.rank, self.local_rank, self.world = dist.init_distributed(torch.device(want).type)
        self.main = self.rank == 0
        self.device = select_device(tc.device, self.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if tc.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        seed_everything(tc.seed + self.rank)
        check_no_teacher(self.task.state_dict(), f"{type(self.task).__name__}.state_dict()")

        self.task.to(self.device)
        if self.world > 1 and self.sync_bn:
            self.task = nn.SyncBatchNorm.convert_sync_batchnorm(self.task)
        self.optimizer = build_optimizer(self.cfg.optim, self.task)

        self.sampler = ResumableBatchSampler(
            len(self.train_set), tc.batch_size, seed=tc.seed, shuffle=True, rank=self.rank,
            world_size=self.world, drop_last=self.drop_last,
        )
        self.iters_per_epoch = self.sampler.num_batches()
        if self.iters_per_epoch == 0:
            raise ValueError(
                f"{len(self.train_set)} samples / {self.world} ranks give no full batch of {tc.batch_size} "
                "(drop_last=True)"
            )
        self.scheduler = build_scheduler(self.cfg.sched, self.optimizer, self.iters_per_epoch, tc.epochs)
        self.loader_gen = torch.Generator()
        self.loader = DataLoader(
            self.train_set, batch_sampler=self.sampler, num_workers=tc.num_workers,
            collate_fn=self.collate_fn, generator=self.loader_gen, pin_memory=self.device.type == "cuda",
            worker_init_fn=_worker_init if tc.num_workers > 0 else None,
        )

        self.amp = bool(tc.amp) and self.device.type == "cuda"
        if self.amp_dtype_name == "auto":
            self.amp_dtype = torch.bfloat16 if self.amp and torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtypes = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                      "fp16": torch.float16, "float16": torch.float16}
            if self.amp_dtype_name not in dtypes:
                raise ValueError(f"train.amp_dtype={self.amp_dtype_name!r}: choose auto, bf16 or fp16")
            self.amp_dtype = dtypes[self.amp_dtype_name]
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.amp_dtype == torch.float16)

        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.task, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.find_unused,
            )
        else:
            self.model = self.task
        self.logger = MetricsLogger(self.run_dir, enabled=self.main, tensorboard=self.use_tb)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.nonfinite = {"consecutive": 0, "total": 0}

    # ---------------------------------------------------------------------------------- checkpointing

    def _model_config_type(self) -> str | None:
        m = getattr(self.cfg, "model", None)
        return f"{type(m).__module__}:{type(m).__qualname__}" if dataclasses.is_dataclass(m) else None

    def _config_dict(self) -> dict:
        return dataclasses.asdict(self.cfg) if dataclasses.is_dataclass(self.cfg) else {}

    def _state(self, full: bool = True) -> dict:
        task_sd = self.task.state_dict()
        check_no_teacher(task_sd)
        state = {
            "format": FORMAT,
            "task": task_sd,
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "nonfinite": dict(self.nonfinite),
            "world_size": self.world,
            "config": self._config_dict(),
            "model_config_type": self._model_config_type(),
        }
        if full:
            state.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                         scaler=self.scaler.state_dict())
        return state

    def save(self, name: str = "last.pt", full: bool = True) -> None:
        """Collective (every rank calls it): gathers RNG states, rank 0 writes ``run_dir/name`` atomically."""
        rngs = dist.gather_objects(rng_state())
        if self.main:
            state = self._state(full)
            state["rng"] = rngs
            bad = nonfinite_tensors({k: state[k] for k in ("task", "optimizer") if k in state})
            if bad:
                raise TrainingDiverged(
                    f"not writing {self.run_dir / name} at global step {self.global_step}: {len(bad)} tensors hold "
                    f"NaN/inf (e.g. {bad[0]}); {_DIVERGENCE_HINT}; {self._kept_checkpoint()}",
                    step=self.global_step, path=self.run_dir / name)
            save_checkpoint(self.run_dir / name, state)
        if name == "last.pt":
            self._saved_step = self.global_step

    def _resume(self, path: Path) -> None:
        state = load_checkpoint(path, map_location="cpu")
        if state.get("format") != FORMAT:
            raise ValueError(f"{path}: not a detkd training checkpoint (format {state.get('format')!r})")
        missing = [k for k in ("optimizer", "scheduler", "rng") if k not in state]
        if missing:
            raise KeyError(f"{path}: lacks {missing} (a final.pt / weights-only file cannot be resumed)")
        try:
            self.task.load_state_dict(state["task"], strict=True)
        except RuntimeError as e:
            raise RuntimeError(f"{path}: task weights do not match the task: {e}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._rescale_lr(state.get("config") or {}, path)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self._saved_step = self.global_step
        self.nonfinite = dict(state.get("nonfinite", self.nonfinite))
        if state.get("world_size", 1) != self.world:
            print(f"[detkd] warning: {path} was written by {state.get('world_size')} ranks, resuming on "
                  f"{self.world}; data order and RNG will differ from an uninterrupted run", file=sys.stderr)
        rngs = state["rng"]
        set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        if self.step_in_epoch >= self.iters_per_epoch:  # saved exactly at the end of an epoch
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.logger.truncate_after(self.global_step)
        if self.main:
            print(f"[detkd] resumed from {path}: epoch {self.epoch}, step {self.step_in_epoch}, "
                  f"global step {self.global_step}", file=sys.stderr)

    def _rescale_lr(self, saved_cfg: dict, path: Path) -> None:
        """An allowed change of ``optim.lr`` on resume (the optimizer and scheduler states hold the old one):
        scale every group's base and current learning rate by new / old, so the schedule continues at the new
        learning rate."""
        old = (saved_cfg.get("optim") or {}).get("lr")
        new = getattr(getattr(self.cfg, "optim", None), "lr", None)
        if not old or new is None or float(old) == float(new):
            return
        r = float(new) / float(old)
        for g in self.optimizer.param_groups:
            g["lr"] *= r
            if "initial_lr" in g:
                g["initial_lr"] *= r
        self.scheduler.base_lrs = [b * r for b in self.scheduler.base_lrs]
        if self.main:
            print(f"[detkd] {path}: optim.lr {old} -> {new}: learning rates scaled by {r:.4g}", file=sys.stderr)

    def _load_init_weights(self, path: str) -> None:
        model = getattr(self.cfg, "model", None)
        load_weights_into(self.task.student, path, "train.init_weights", expected=getattr(model, "name", None))

    # ------------------------------------------------------------------------------------------- steps

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train_step(self, batch: Any) -> dict[str, Tensor] | None:
        """One iteration; returns the detached loss terms, or ``None`` when the step was skipped."""
        batch = to_device(batch, self.device)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            losses = self.model(batch)
        if not isinstance(losses, Mapping) or not losses:
            raise TypeError(f"task(batch) must return a non-empty dict of loss tensors, got {type(losses).__name__}")
        total = sum(v.float() for v in losses.values())
        finite = dist.all_reduce_min(float(torch.isfinite(total).item()))
        self.optimizer.zero_grad(set_to_none=True)
        if finite < 1:
            self._skip(losses)
            return None
        self.scaler.scale(total).backward()
        if self.cfg.train.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            norm = nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.cfg.train.clip_grad
            )
            if not torch.isfinite(norm) and not self.scaler.is_enabled():
                self.optimizer.zero_grad(set_to_none=True)
                self._skip(losses, what="gradient norm")
                return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.nonfinite["consecutive"] = 0
        return {k: v.detach() for k, v in losses.items()}

    def _skip(self, losses: Mapping[str, Tensor], what: str = "loss") -> None:
        self.nonfinite["consecutive"] += 1
        self.nonfinite["total"] += 1
        bad = [k for k, v in losses.items() if not torch.isfinite(v.detach()).all()]
        where = f"epoch {self.epoch}, global step {self.global_step + 1}"
        if self.nonfinite["consecutive"] >= self.cfg.train.max_nonfinite:
            raise NonFiniteLossError(
                f"non-finite {what} for {self.nonfinite['consecutive']} consecutive steps "
                f"(train.max_nonfinite={self.cfg.train.max_nonfinite}) at {where}; non-finite terms: {bad or 'sum'}; "
                f"{_DIVERGENCE_HINT}; {self._kept_checkpoint()}", step=self.global_step + 1
            )
        if self.main:
            print(f"[detkd] skipped step at {where}: non-finite {what} ({bad or 'sum'})", file=sys.stderr)

    # ------------------------------------------------------------------------- divergence and signals

    def _kept_checkpoint(self) -> str:
        last = self.run_dir / "last.pt"
        if self._saved_step is not None and last.is_file():
            return (f"the last finite checkpoint {last} (global step {self._saved_step}) is kept: continue with "
                    "--resume and a lower learning rate (--allow-changed optim.lr)")
        return "no checkpoint was written before this point"

    def _weights_finite(self) -> bool:
        tensors = [t for t in itertools.chain(self.task.parameters(), self.task.buffers()) if t.is_floating_point()]
        if not tensors:
            return True
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    def _check_step(self, lr: float) -> bool:
        """After a step: raise ``TrainingDiverged`` when a weight of any rank is non-finite; return whether any
        rank got SIGINT/SIGTERM. One collective under DDP, none in a single process."""
        finite, go_on = dist.all_reduce_min_many([float(self._weights_finite()), float(self._signal is None)])
        if finite < 1:
            bad = [n for n, t in itertools.chain(self.task.named_parameters(), self.task.named_buffers())
                   if t.is_floating_point() and not bool(torch.isfinite(t).all())]
            raise TrainingDiverged(
                f"training diverged: the weights became non-finite at global step {self.global_step} (epoch "
                f"{self.epoch}, lr {lr:.4g}; {len(bad)} tensors on this rank, e.g. {bad[0] if bad else '-'}); "
                f"{_DIVERGENCE_HINT}; {self._kept_checkpoint()}", step=self.global_step,
                path=self.run_dir / "last.pt")
        return go_on < 1

    def _on_signal(self, signum: int, frame: Any) -> None:
        torchrun = "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ
        if self._signal is not None:
            if signum == signal.SIGINT and not torchrun:  # a second Ctrl-C: stop now, nothing saved
                self._restore_signal_handlers()
                raise KeyboardInterrupt
            return  # torchrun forwards the terminal's signal again: keep finishing the step
        self._signal = signum
        if self.main:
            os.write(2, f"\n[detkd] {signal.Signals(signum).name}: finishing the current step, then saving "
                        f"{self.run_dir / 'last.pt'} (Ctrl-C again to stop without saving)\n".encode())

    def _install_signal_handlers(self) -> None:
        self._signal = None
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}

    def _interrupt(self) -> None:
        """Save ``last.pt`` (collective) unless this step is already saved, then raise ``TrainingInterrupted``."""
        if self._saved_step != self.global_step:
            self.save("last.pt")
        path = self.run_dir / "last.pt"
        name = signal.Signals(self._signal).name if self._signal is not None else "a signal on another rank"
        msg = (f"[detkd] interrupted by {name} at epoch {self.epoch}, global step {self.global_step}; saved "
               f"{path}. Resume with the same command plus --resume (Trainer.fit(resume=True)).")
        if self.main:
            print(msg, file=sys.stderr, flush=True)
        raise TrainingInterrupted(msg, checkpoint=path, signum=self._signal)

    def run_evaluation(self) -> dict | None:
        """Call ``evaluate(student, epoch)`` on every rank with the training RNG isolated; rank 0 logs it."""
        if self.evaluate_fn is None:
            return None
        dist.broadcast_buffers(self.task)  # every rank evaluates the same model
        saved = rng_state()
        was_training = self.task.training
        self.task.eval()
        try:
            with torch.no_grad():
                metrics = self.evaluate_fn(self.task.student, self.epoch)
        finally:
            self.task.train(was_training)
            set_rng_state(saved)
        if self.main and metrics:
            self.logger.log_eval(self.global_step, self.epoch, metrics)
        return metrics

    # --------------------------------------------------------------------------------------------- fit

    def fit(self, resume: bool | None = None) -> dict:
        """Train to ``cfg.train.epochs`` (or ``max_iters``); returns the summary (also ``summary.json``)."""
        tc = self.cfg.train
        resume = bool(tc.resume) if resume is None else resume
        accepted = check_run_dir(self.run_dir, self._config_dict(), resume=resume, overwrite=self.overwrite,
                                 allow_changed=self.allow_changed)
        if self.overwrite and not resume and dist._env_int("RANK", 0) == 0:
            removed = clear_run_dir(self.run_dir)
            if removed:
                print(f"[detkd] --overwrite: removed {', '.join(removed)} from {self.run_dir}", file=sys.stderr)
        self._setup()
        if accepted and self.main:
            print(f"[detkd] resuming with changed {', '.join(accepted)} (allowed by allow_changed)", file=sys.stderr)
        t0 = time.time()
        ckpt = find_resume(self.run_dir) if resume else None
        if ckpt is not None:
            self._resume(ckpt)
        else:
            if resume and self.main:
                print(f"[detkd] no {self.run_dir / 'last.pt'} to resume from; starting fresh", file=sys.stderr)
            if tc.init_weights:
                self._load_init_weights(tc.init_weights)
            self.logger.truncate_after(0)
        if self.main:
            write_json_atomic(self.run_dir / "config.json", self._config_dict())
        self.task.train()
        last_losses: dict[str, float] = {}
        metrics: dict | None = None
        stopped = False
        self._install_signal_handlers()
        try:
            while self.epoch < tc.epochs and not stopped:
                if hasattr(self.train_set, "set_epoch"):
                    self.train_set.set_epoch(self.epoch)
                self.sampler.set_epoch(self.epoch, self.step_in_epoch)
                self.loader_gen.manual_seed(_epoch_seed(tc.seed, self.epoch, salt=1 + self.rank))
                bar = progress(self.loader, total=self.iters_per_epoch, initial=self.step_in_epoch,
                               enabled=self.main and self.show_progress,
                               desc=f"{getattr(self.cfg, 'name', 'train')} epoch {self.epoch + 1}/{tc.epochs}")
                for batch in bar:
                    lr = self._lr()
                    losses = self.train_step(batch)
                    self.scheduler.step()
                    self.step_in_epoch += 1
                    self.global_step += 1
                    interrupted = self._check_step(lr)
                    if losses is not None and (self.global_step % max(1, tc.log_every) == 0):
                        last_losses = dist.all_reduce_mean(losses)
                        self.logger.log_train(self.global_step, self.epoch, lr, last_losses)
                        bar.set_postfix(loss=f"{sum(last_losses.values()):.4f}")
                    stopped = 0 < tc.max_iters <= self.global_step
                    end_of_epoch = self.step_in_epoch >= self.iters_per_epoch
                    if stopped or (self.ckpt_every_iters > 0 and self.global_step % self.ckpt_every_iters == 0
                                   and not end_of_epoch):
                        self.save("last.pt")
                    if interrupted:
                        bar.close()
                        self._interrupt()
                    if stopped:
                        break
                bar.close()
                if stopped and self.step_in_epoch < self.iters_per_epoch:
                    break
                self.epoch += 1
                self.step_in_epoch = 0
                if (
                    (tc.ckpt_every > 0 and self.epoch % tc.ckpt_every == 0)
                    or (self.ckpt_every_iters > 0 and self.global_step % self.ckpt_every_iters == 0)
                    or self.epoch == tc.epochs
                    or stopped
                ):
                    self.save("last.pt")
                if tc.eval_every > 0 and self.epoch % tc.eval_every == 0 and self.epoch < tc.epochs and not stopped:
                    metrics = self.run_evaluation()
                if dist.all_reduce_min(float(self._signal is None)) < 1:  # e.g. during the evaluation
                    self._interrupt()
            metrics = self.run_evaluation()
            dist.broadcast_buffers(self.task)
            self.save("final.pt", full=False)
            summary = {
                "name": getattr(self.cfg, "name", ""),
                "epochs": self.epoch,
                "global_step": self.global_step,
                "stopped_early": bool(stopped),
                "last_losses": last_losses,
                "nonfinite_skipped": self.nonfinite["total"],
                "eval": metrics or {},
                "world_size": self.world,
                "device": str(self.device),
                "wall_time_s": round(time.time() - t0, 3),
            }
            if self.main:
                write_json_atomic(self.run_dir / "summary.json", summary)
            return summary
        finally:
            self._restore_signal_handlers()
            self.logger.close()
