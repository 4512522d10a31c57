"""Distributed helpers over ``torch.distributed``; every function also works in a plain single process.

Runs start through ``torchrun`` (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``PORT`` in the
environment). The backend is ``nccl`` on CUDA and ``gloo`` on CPU. Collectives (``all_reduce_mean``,
``gather_objects``, ``barrier``) must be called by every rank in the same order.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "init_distributed",
    "is_dist",
    "rank",
    "local_rank",
    "world_size",
    "is_main",
    "barrier",
    "all_reduce_mean",
    "all_reduce_min",
    "all_reduce_min_many",
    "gather_objects",
    "broadcast_object",
    "broadcast_buffers",
    "cleanup",
]


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def init_distributed(device_type: str = "cpu") -> tuple[int, int, int]:
    """Join the process group described by the torchrun environment, if ``WORLD_SIZE > 1``.

    Returns ``(rank, local_rank, world_size)``. Idempotent; a no-op in a single process."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return 0, 0, 1
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    lrank = _env_int("LOCAL_RANK", 0)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(lrank)
        dist.init_process_group(backend=backend, init_method="env://")
    return dist.get_rank(), lrank, dist.get_world_size()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def _collective_device() -> torch.device:
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(values: dict[str, Any]) -> dict[str, float]:
    """Mean over ranks of a dict of scalars (tensors or numbers), as python floats. Same keys on every rank."""
    keys = sorted(values)
    if not keys:
        return {}
    vec = torch.stack(
        [torch.as_tensor(values[k], dtype=torch.float64).detach().reshape(()).cpu() for k in keys]
    )  # [K]
    if is_dist():
        vec = vec.to(_collective_device())
        dist.all_reduce(vec, op=dist.ReduceOp.SUM)
        vec = vec / dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, vec.cpu().tolist())}


def all_reduce_min(value: float) -> float:
    """Minimum of one scalar over ranks (e.g. an ``all ranks finite`` flag)."""
    if not is_dist():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t.item())


def all_reduce_min_many(values: list[float]) -> list[float]:
    """Element-wise minimum over ranks of a short list of scalars, in one collective."""
    if not is_dist():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return [float(v) for v in t.cpu().tolist()]


def gather_objects(obj: Any) -> list | None:
    """Gather one picklable object per rank: the list (rank order) on rank 0, ``None`` on other ranks."""
    if not is_dist():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (e.g. BN running statistics) to every rank. DDP only syncs them at the start of
    each forward, so after the last step ranks differ until this is called (before evaluation / saving)."""
    if not is_dist():
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src=0)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
