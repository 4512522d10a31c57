"""benchmarks/step_ratio.py: its cells, and writing a measured ratio into the KD-gain result files."""
from __future__ import annotations

import json

from tests._benchmarks import load_benchmark


def bench():
    return load_benchmark("step_ratio")


def test_cells_are_the_kd_gain_cells_and_their_teachers_ship():
    b = bench()
    assert set(b.PAIRS) == {"fgfi/faster_rcnn_vgg", "fgfi/faster_rcnn_fpn", "defeat/faster_rcnn_fpn",
                            "defeat/retinanet", "tdkd/gfl", "ld/retinanet"}
    for family in b.TEACHERS.values():
        assert (b.ASSETS / f"synthshapes_teacher_{family}.safetensors").is_file()


def test_update_results_rewrites_the_ratio_and_its_line(tmp_path):
    b = bench()
    (tmp_path / "kd_gain_fgfi_faster_rcnn_fpn.json").write_text(json.dumps({"method": "fgfi", "step_ratio": 1.5}))
    (tmp_path / "kd_gain_fgfi_faster_rcnn_fpn.md").write_text(
        "# t\n\nStep-time ratio distill / (student + teacher forward): 1.500 (bar; [8, 3]). Wall 9 s.\n\nmore\n")
    gen = {"cells": {"tdkd/gfl": {"step_ratio": 1.0}, "ld/retinanet": {"step_ratio": 1.4}}}
    (tmp_path / "kd_gain_generalised.json").write_text(json.dumps(gen))
    (tmp_path / "kd_gain_generalised.md").write_text(
        "## tdkd/gfl\n\nStep-time ratio distill / (student + teacher forward): 1.000.\n\n"
        "## ld/retinanet\n\nStep-time ratio distill / (student + teacher forward): 1.400.\n")
    timing = {"ratio": 1.1234, "ratio_taps": 1.2}
    assert b.update_results(tmp_path, "fgfi/faster_rcnn_fpn", timing, "by X")
    assert b.update_results(tmp_path, "ld/retinanet", timing, "by X")
    assert not b.update_results(tmp_path, "defeat/retinanet", timing, "by X")
    js = json.loads((tmp_path / "kd_gain_fgfi_faster_rcnn_fpn.json").read_text())
    assert js == {"method": "fgfi", "step_ratio": 1.1234, "step_ratio_by": "by X"}
    md = (tmp_path / "kd_gain_fgfi_faster_rcnn_fpn.md").read_text()
    assert "forward): 1.123 (by X; 1.200 over" in md and "1.500" not in md and md.endswith("runs). Wall 9 s.\n\nmore\n")
    assert b.update_results(tmp_path, "fgfi/faster_rcnn_fpn", {"ratio": 1.0, "ratio_taps": 1.1}, "by Y")  # again
    md = (tmp_path / "kd_gain_fgfi_faster_rcnn_fpn.md").read_text()
    assert "forward): 1.000 (by Y; 1.100 over the teacher forward the distillation runs). Wall 9 s.\n" in md
    gen = json.loads((tmp_path / "kd_gain_generalised.json").read_text())["cells"]
    assert gen["tdkd/gfl"] == {"step_ratio": 1.0} and gen["ld/retinanet"]["step_ratio"] == 1.1234
    md = (tmp_path / "kd_gain_generalised.md").read_text()
    assert "forward): 1.000." in md and "forward): 1.123 (by X" in md and "1.400" not in md
