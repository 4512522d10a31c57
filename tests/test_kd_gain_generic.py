"""benchmarks/kd_gain_generic.py: the verdict arithmetic, the pair table, and a smoke run end to end (slow)."""
from __future__ import annotations

import json

import pytest

from detkd.config import load_config
from tests._benchmarks import load_benchmark


def bench():
    return load_benchmark("kd_gain_generic")


def test_verdict_uses_paired_gains_and_sample_std():
    b = bench()
    v = b.verdict([0.50, 0.52, 0.51], [0.55, 0.56, 0.56], [0.53, 0.53, 0.53])
    assert v["gains"] == pytest.approx([0.05, 0.04, 0.05])
    assert v["gain_std"] == pytest.approx(0.005773503, rel=1e-6)  # ddof 1
    assert v["above_2std"] and v["every_seed_gains"] and v["not_below_feat"]
    v = b.verdict([0.50, 0.52], [0.56, 0.51], [0.60, 0.60])
    assert not v["every_seed_gains"] and not v["not_below_feat"]


def test_every_pair_names_loadable_configs_with_matching_students():
    b = bench()
    assert set(b.PAIRS) == {("fgfi", "faster_rcnn_vgg"), ("fgfi", "faster_rcnn_fpn"), ("defeat", "faster_rcnn_fpn"),
                            ("defeat", "retinanet")}
    for (method, _), pair in b.PAIRS.items():
        student, distill = load_config(pair.student), load_config(pair.distill)
        assert distill.distill.methods == [method] and distill.model == student.model
        feat = load_config(pair.distill)
        b.feat_config(feat)
        assert feat.distill.methods == ["feat"] and feat.distill.feat.student_taps == \
            distill.distill.config_section(method).student_taps


def test_smoke_refuses_the_shipped_results_dir():
    with pytest.raises(SystemExit):
        bench().main(["--method", "fgfi", "--detector", "faster_rcnn_vgg", "--smoke"])


@pytest.mark.slow
def test_smoke_run_writes_the_issue_json(tmp_path):
    res = bench().main(["--method", "defeat", "--detector", "retinanet", "--smoke", "--seeds", "0",
                        "--out", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "res")])
    data = json.loads((tmp_path / "res" / "kd_gain_defeat_retinanet.json").read_text())
    assert data["method"] == res["method"] == "defeat" and data["detector"] == "retinanet"
    assert list(data) == ["method", "detector", "metric", "seeds", "control", "distilled", "feat", "coco_ap",
                          "step_ratio", "wall_s"]
    assert set(data["coco_ap"]) == {"control", "distilled", "feat"} and data["seeds"] == [0]
    assert all(len(data[k]) == 1 and 0.0 <= data[k][0] <= 1.0 for k in ("control", "distilled", "feat"))
    assert data["step_ratio"] > 0
    assert "SMOKE RUN" in (tmp_path / "res" / "kd_gain_defeat_retinanet.md").read_text()
