"""Shared helpers for the FGFI / DeFeat end-to-end tests on RetinaFace and SynthFaces."""
from __future__ import annotations

from pathlib import Path

import torch

from detkd.data import synthfaces as S
from detkd.data.loader import collate_detection
from detkd.data.widerface import WiderFaceTrain
from detkd.distill.distiller import DistillConfig, build_distill_task
from detkd.models.weights import load_model_file
from detkd.registry import build_model

ASSETS = Path(__file__).resolve().parents[1] / "detkd" / "assets"


def distill_config(method: str, section) -> DistillConfig:
    """``DistillConfig(methods=[method])`` with ``section`` as that method's config."""
    return DistillConfig(methods=[method], **{method: section})


def shipped_pair():
    """The shipped SynthFaces teacher (0.75, task convs) and a fresh 0.25 student."""
    from detkd.models.retinaface import RetinaFaceConfig

    teacher, _ = load_model_file(ASSETS / "synthfaces_teacher_mnet075.safetensors")
    torch.manual_seed(0)
    student = build_model(RetinaFaceConfig(width=0.25))
    return student, teacher


def synth_batches(root: Path, n: int = 3, batch_size: int = 2, img_size: int = 128):
    S.ensure_synthfaces(root, seed=1, n_train=n * batch_size, n_val=2, image_size=160)
    ds = WiderFaceTrain(root, img_size=img_size, augment=True, seed=0)
    return [collate_detection([ds[i * batch_size + j] for j in range(batch_size)]) for i in range(n)]


def run_steps(method: str, section, root: Path, steps: int = 3):
    """A few SGD steps of ``method`` on SynthFaces; returns (task, per-step losses, adapter grad norms)."""
    student, teacher = shipped_pair()
    task = build_distill_task(distill_config(method, section), student, teacher)
    task.train()
    opt = torch.optim.SGD(task.parameters(), lr=1e-3, momentum=0.9)
    history, grads = [], []
    for batch in synth_batches(root, steps):
        losses = task(batch)
        opt.zero_grad()
        sum(losses.values()).backward()
        grads.append({k: float(a[0].weight.grad.norm() if isinstance(a, torch.nn.Sequential) else a.weight.grad.norm())
                      for k, a in task.distiller.adapters.items()})
        opt.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    return task, history, grads
