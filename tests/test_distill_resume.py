"""A distillation run stopped mid-way and resumed reproduces the uninterrupted run's losses exactly."""
import json

import pytest
import torch

from detkd.config import load_config
from detkd.data.synthfaces import write_synthfaces
from detkd.engine.checkpoint import export_student
from detkd.experiment import train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sfr")
    write_synthfaces(root / "data", seed=5, n_train=8, n_val=2, image_size=96)
    common = ["data.name=widerface", f"data.root={root / 'data'}", "data.img_size=96", "train.batch_size=2",
              f"train.out_dir={root / 'runs'}", "train.progress=false", "train.tensorboard=false"]
    torch.manual_seed(0)
    cfg = load_config("retinaface/mnet075_tasks_synthfaces", ["name=teacher", "train.max_iters=1", *common])
    train(cfg, evaluate=False)
    teacher = export_student(root / "runs" / "teacher", root / "teacher.safetensors")
    return root, [*common, f"distill.teacher_weights={teacher}"]


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], {k: v for k, v in r.items() if k.startswith("kd.")})
            for r in rows if r.get("kind") == "train"]


def test_distillation_resume_is_exact(setup):
    root, common = setup
    name = "tdkd/retinaface_mnet075_to_mnet025_synthfaces"
    over = [*common, "train.epochs=2", "train.log_every=1", "train.ckpt_every_iters=1"]
    train(load_config(name, ["name=full", *over]), evaluate=False)
    # the same run, stopped after 3 of its 8 iterations, then resumed from last.pt
    train(load_config(name, ["name=part", *over, "train.max_iters=3"]), evaluate=False)
    train(load_config(name, ["name=part", *over]), resume=True, evaluate=False)
    full, part = losses(root / "runs" / "full"), losses(root / "runs" / "part")
    assert len(full) == 8 and any(kd for _, _, kd in full)
    assert part == full
