"""`detkd distill-chain`: teacher -> assistant -> student end to end on a tiny SynthShapes set (2 steps a stage)."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from detkd.chain import plan_chain
from detkd.cli import app
from detkd.config import load_config
from detkd.models.weights import save_model_file
from detkd.registry import build_model

CHAIN = ["ld/ld_lite_synthshapes", "ld/self_ld_lite_synthshapes"]  # R34 -> R18 assistant -> R18 student


def tiny_overrides(tmp_path, teacher) -> list[str]:
    return [f"data.root={tmp_path / 'ss'}", "data.n_train=4", "data.n_val=2", "data.img_size=128",
            f"train.out_dir={tmp_path / 'runs'}", "train.batch_size=2", "train.max_iters=2", "train.epochs=1",
            "train.progress=false", "train.tensorboard=false", "eval.max_images=2",
            f"distill.teacher_weights={teacher}"]


@pytest.fixture
def first_teacher(tmp_path):
    torch.manual_seed(0)
    teacher = build_model(load_config("gfl/r18_half_teacher_synthshapes").model)
    save_model_file(teacher, tmp_path / "r34.safetensors")
    return tmp_path / "r34.safetensors"


@pytest.mark.slow
def test_distill_chain_end_to_end(tmp_path, first_teacher):
    res = CliRunner().invoke(app, ["distill-chain", *CHAIN, *tiny_overrides(tmp_path, first_teacher),
                                   "--out-dir", str(tmp_path / "chain")])
    assert res.exit_code == 0, res.output
    record = json.loads((tmp_path / "chain" / "chain.json").read_text())
    s1, s2 = record["stages"]
    assert s1["teacher_weights"] == str(first_teacher) and s1["teacher"] == "gfl-r34" and s1["student"] == "gfl-r18"
    assert s2["teacher_weights"] == s1["export"]  # the assistant's export teaches stage 2
    assert s1["global_step"] == s2["global_step"] == 2 and "mAP" in s1["eval"] and 0 <= s2["eval"]["mAP"] <= 1
    md = (tmp_path / "chain" / "chain.md").read_text()
    assert "| 1 | ld/ld_lite_synthshapes | gfl-r34 | gfl-r18 |" in md and "| 2 |" in md
    # stage 2's teacher really holds the assistant's trained weights
    from detkd.engine.checkpoint import load_student_weights

    a = load_student_weights(s1["export"])
    b = load_student_weights(tmp_path / "runs" / "self_ld_lite_synthshapes" / "student.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    ckpt = torch.load(tmp_path / "runs" / "self_ld_lite_synthshapes" / "last.pt", weights_only=True)
    teacher_sd = {k[len("teacher."):]: v for k, v in ckpt["task"].items() if k.startswith("teacher.")}
    assert not teacher_sd or all(torch.equal(teacher_sd[k], a[k]) for k in teacher_sd if k in a)


def test_chain_errors(tmp_path, first_teacher):
    with pytest.raises(ValueError, match="at least 2 configs"):
        plan_chain(CHAIN[:1])
    with pytest.raises(ValueError, match="distill.teacher_weights"):
        plan_chain(CHAIN)
    with pytest.raises(ValueError, match="stage 2 .* is not the model that stage 1"):
        plan_chain(["ld/self_ld_lite_synthshapes", "ld/ld_lite_synthshapes"],
                   [f"distill.teacher_weights={first_teacher}"])
    bad = CliRunner().invoke(app, ["distill-chain", "ld/ld_lite_synthshapes"])
    assert bad.exit_code == 2 and "at least 2 configs" in bad.output
