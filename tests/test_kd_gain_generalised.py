"""benchmarks/kd_gain_generalised.py: its cells name loadable configs whose models fit together, and the smoke
mode refuses the shipped results dir (the end-to-end smoke run is `--smoke`, minutes on 2 cores: not here)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from detkd.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def bench():
    spec = importlib.util.spec_from_file_location("kd_gain_generalised", ROOT / "benchmarks" / "kd_gain_generalised.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


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
