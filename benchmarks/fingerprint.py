"""A deterministic fingerprint of detkd's numerics, to prove that a refactor changed no result.

What it records (CPU, one intra-op thread, fixed seeds):

* a tiny SynthFaces set (16 training / 4 validation scenes, seed 0) written under the work directory;
* ``steps`` training steps of each of ``retinaface/mnet025_synthfaces`` (from scratch) and of the ``tdkd``,
  ``kd`` and ``feat`` fine-tunes of the shipped baseline with the shipped teacher: the loss terms of every
  step (from ``metrics.jsonl``) and a SHA-256 of the final student weights;
* the shipped teacher's ``DetOutput`` on one training batch: hashes of head outputs, priors, assignment and
  the task losses;
* the shipped teacher's decoded detections on the validation scenes under two test protocols (hash + counts)
  and its WIDER AP on them.

``python benchmarks/fingerprint.py --out fp.json`` writes the fingerprint; ``--check fp.json`` compares a new
one against it and exits 1 on any difference. Runs in about a minute on 2 cores.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "detkd" / "assets"
TEACHER = ASSETS / "synthfaces_teacher_mnet075.safetensors"
BASELINE = ASSETS / "synthfaces_baseline_mnet025.safetensors"
RUNS = {
    "student": ("retinaface/mnet025_synthfaces", []),
    "tdkd": ("tdkd/retinaface_mnet075_to_mnet025_synthfaces", [f"distill.teacher_weights={TEACHER}",
                                                              f"train.init_weights={BASELINE}"]),
    "kd": ("kd/retinaface_mnet075_to_mnet025_synthfaces", [f"distill.teacher_weights={TEACHER}",
                                                          f"train.init_weights={BASELINE}"]),
    "feat": ("feat/retinaface_mnet075_to_mnet025_synthfaces", [f"distill.teacher_weights={TEACHER}",
                                                              f"train.init_weights={BASELINE}"]),
}


def sha(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = a.detach().cpu().contiguous().numpy() if isinstance(a, torch.Tensor) else np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def state_hash(sd: dict) -> str:
    return sha(*[sd[k] for k in sorted(sd)])


def tiny_synthfaces(root: Path) -> Path:
    from detkd.data.synthfaces import write_synthfaces

    return write_synthfaces(root, seed=0, n_train=16, n_val=4, image_size=320)


def train_run(name: str, config: str, overrides: list[str], data: Path, out: Path, steps: int) -> dict:
    """``steps`` iterations of ``config`` on the tiny set; losses per step and the final weights' hash."""
    from detkd.config import load_config
    from detkd.data.loader import collate_detection
    from detkd.data.widerface import WiderFaceTrain
    from detkd.engine.logging import read_metrics
    from detkd.engine.loop import Trainer
    from detkd.experiment import build_task

    cfg = load_config(config, [f"name={name}", f"train.out_dir={out}", "train.batch_size=4", "train.log_every=1",
                               f"train.max_iters={steps}", "train.epochs=1", "train.tensorboard=false",
                               "train.progress=false", "train.device=cpu", *overrides])
    torch.manual_seed(cfg.train.seed)
    task = build_task(cfg)
    train_set = WiderFaceTrain(data, img_size=cfg.data.img_size, augment=True, seed=cfg.train.seed)
    Trainer(cfg, task, train_set, evaluate=None, collate_fn=collate_detection).fit()
    rows = read_metrics(out / name, kind=None)
    losses = [{k: v for k, v in r.items() if k.startswith(("task.", "kd.", "loss"))} for r in rows
              if any(k.startswith("task.") for k in r)]
    return {"losses": losses, "weights": state_hash(task.student.state_dict())}


def teacher_checks(data: Path) -> dict:
    from safetensors.torch import load_file

    from detkd.config import load_config
    from detkd.data.loader import collate_detection
    from detkd.data.widerface import WiderFaceTrain, WiderFaceVal
    from detkd.experiment import evaluate_widerface
    from detkd.infer import detect_image
    from detkd.registry import build_model

    model = build_model(load_config("retinaface/mnet075_tasks_synthfaces").model)
    model.load_state_dict(load_file(str(TEACHER)), strict=True)
    model.eval()
    res: dict = {}
    ds = WiderFaceTrain(data, img_size=256, augment=True, seed=0)
    images, targets, _ = collate_detection([ds[i] for i in range(4)])
    with torch.no_grad():
        out = model(images, targets, decode=True)
    a = out.assign
    res["head"] = {k: sha(*v) for k, v in sorted(out.head.items())}
    res["feats"] = {k: sha(v) for k, v in sorted(out.feats.items())}
    res["priors_xyxy"] = sha(*[_xyxy(model, p) for p in out.priors])
    res["assign"] = sha(a.labels, a.matched, a.pos, a.neg, a.ignore, a.iou, a.neg_rank)
    res["losses"] = {k: float(v) for k, v in sorted(out.losses.items())}
    res["train_dets"] = sha(*[d[k] for d in out.dets for k in ("boxes", "scores", "labels", "landmarks")])
    val = WiderFaceVal(data / "val" / "images", data / "val" / "gt")
    for protocol in ("biubug6-origin", "tdkd-640"):
        dets = [detect_image(model, val[i][0], protocol) for i in range(len(val))]
        res[f"dets.{protocol}"] = {
            "hash": sha(*[d[k] for d in dets for k in ("boxes", "scores", "landmarks")]),
            "counts": [int(d["scores"].numel()) for d in dets],
            "top_score": [round(float(d["scores"][0]), 6) if d["scores"].numel() else None for d in dets],
        }
        res[f"ap.{protocol}"] = evaluate_widerface(model, data / "val" / "images", data / "val" / "gt", protocol,
                                                   progress=False)
    return res


def _xyxy(model, p: torch.Tensor) -> torch.Tensor:
    """Priors as xyxy whatever the model reports (xyxy since issue 11 gave models a ``head_spec``; cxcywh before)."""
    from detkd.ops.boxes import cxcywh_to_xyxy

    return p if hasattr(model, "head_spec") else cxcywh_to_xyxy(p)


def fingerprint(work: Path, steps: int) -> dict:
    torch.set_num_threads(1)
    data = tiny_synthfaces(work / "synthfaces")
    fp = {"teacher": teacher_checks(data)}
    for name, (config, overrides) in RUNS.items():
        fp[name] = train_run(name, config, overrides, data, work / "runs", steps)
    return fp


def diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{path}{k}: only in {'new' if k in b else 'reference'}")
            else:
                out += diff(a[k], b[k], f"{path}{k}.")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}{i}.")]
    return [] if a == b else [f"{path[:-1]}: reference {a!r} != new {b!r}"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="write the fingerprint JSON here")
    ap.add_argument("--check", type=Path, help="compare with this reference fingerprint JSON")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fp = fingerprint(args.work or Path(tmp), args.steps)
    text = json.dumps(fp, indent=1, sort_keys=True)
    if args.out:
        args.out.write_text(text + "\n")
    if not args.check:
        print(text)
        return 0
    diffs = diff(json.loads(args.check.read_text()), fp)
    for d in diffs:
        print("DIFF", d)
    print(f"fingerprint: {'IDENTICAL' if not diffs else f'{len(diffs)} differences'} to {args.check}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
