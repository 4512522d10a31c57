"""benchmarks/kd_gain_generalised.py: its cells name loadable configs whose models fit together, and the smoke
mode refuses the shipped results dir (the end-to-end smoke run is `--smoke`, minutes on 2 cores: not here)."""
from __future__ import annotations

import pytest

from detkd.config import load_config
from tests._benchmarks import load_benchmark


def bench():
    return load_benchmark("kd_gain_generalised")


def test_cells_name_matching_configs(tmp_path):
    b = bench()
    assert set(b.CELLS) == {"tdkd/gfl", "ld/retinanet"}
    for name, cell in b.CELLS.items():
        method = name.split("/")[0]
        student = load_config(cell.student, cell.model)
        distill = load_config(cell.distill)
        assert distill.distill.methods == [method] and distill.model == student.model, name
        teacher = b.teacher_config(cell, [])
        assert teacher.model == distill.distill.teacher and teacher.data == student.data
        cfgs = b.finetunes(cell, tmp_path, 0, tmp_path / "b.safetensors", tmp_path / "t.safetensors", [])
        assert cfgs["control"].distill is None and cfgs["control"].model == student.model
        assert cfgs["distilled"].distill.methods == [method] and cfgs["feat"].distill.methods == ["feat"]
        assert cfgs["feat"].distill.feat.student_taps == ["p3", "p4", "p5", "p6", "p7"]
        assert all(c.train.init_weights == str(tmp_path / "b.safetensors") for c in cfgs.values())
    # LD on RetinaNet: every model of the cell has the distribution branch
    assert load_config(b.CELLS["ld/retinanet"].student, b.CELLS["ld/retinanet"].model).model.dist_reg_max == 16


def test_smoke_refuses_the_shipped_results_dir():
    with pytest.raises(SystemExit):
        bench().main(["--smoke"])


def test_shipped_models_get_the_ld_branch(tmp_path):
    """A RetinaNet export without the distribution branch (the shipped ones) gets it added at its fresh init with
    every trained weight kept; training the branch alone changes nothing else, so detections stay the same."""
    import torch

    from detkd.models.weights import load_model_file, load_state_file, save_model_file
    from detkd.registry import build_model

    b = bench()
    cell = b.CELLS["ld/retinanet"]
    plain_cfg = load_config(cell.student, ["data.img_size=160", "train.batch_size=2"])
    assert plain_cfg.model.dist_reg_max == 0
    torch.manual_seed(0)
    plain = save_model_file(build_model(plain_cfg.model), tmp_path / "plain.safetensors")
    assert plain
    want = load_config(cell.student, cell.model).model
    out = b.with_branch(tmp_path / "plain.safetensors", want, tmp_path / "branched.safetensors")
    assert out == tmp_path / "branched.safetensors"
    before, after = load_state_file(tmp_path / "plain.safetensors"), load_state_file(out)
    added = sorted(set(after) - set(before))
    assert added and all(k.startswith("head.regression_head.bbox_dist") for k in added)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert b.with_branch(out, want, tmp_path / "again.safetensors") == out  # already fits: returned as is
    with pytest.raises(ValueError, match="does not fit"):  # another architecture is refused, not patched
        b.with_branch(tmp_path / "plain.safetensors", load_config("retinanet/r18_half_teacher_synthshapes").model,
                      tmp_path / "bad.safetensors")

    data = b.G.Data(tmp_path / "synthshapes", n_train=4, n_val=2, max_long=224, preset=plain_cfg.data.preset)
    cfg = load_config(cell.student, [*cell.model, "data.img_size=160", "train.batch_size=2"])
    trained = b.train_branch(out, cfg, data, 2, tmp_path / "trained.safetensors")
    final = load_state_file(trained)
    assert all(torch.equal(final[k], after[k]) for k in before)  # frozen: every shipped weight untouched
    assert any(not torch.equal(final[k], after[k]) for k in added)  # the branch learned
    model, _ = load_model_file(trained)
    assert model.config.dist_reg_max == 16
