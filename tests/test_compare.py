"""`detkd compare`: the paired-seed rule, run directories and benchmark JSON as inputs, and the diagnosis."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detkd.cli import app
from detkd.compare import compare, diagnose, format_compare, load_results, term_scales
from detkd.reporting import paired_gain, sample_std, verdict_words

REPO = Path(__file__).resolve().parents[1]
TDKD = REPO / "benchmarks" / "results" / "tdkd_synthfaces.json"
runner = CliRunner()


def test_paired_gain_rule():
    assert sample_std([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert math.isnan(sample_std([1.0]))
    p = paired_gain([10.0, 20.0, 30.0], [12.0, 22.5, 31.5])  # diffs 2, 2.5, 1.5: mean 2, std 0.5
    assert p["diffs"] == [2.0, 2.5, 1.5] and p["mean"] == pytest.approx(2.0)
    assert p["two_sigma"] == pytest.approx(1.0) and p["verdict"] == "gain"
    assert "distillation helped" in verdict_words(p)
    noisy = paired_gain([0.0, 0.0, 0.0], [3.0, -0.5, 2.0])  # mean 1.5 but one seed loses
    assert noisy["verdict"] == "no clear difference" and "only 2 of 3 seeds gain" in verdict_words(noisy)
    wide = paired_gain([0.0, 0.0, 0.0], [0.1, 4.0, 0.2])  # every seed gains, mean within 2σ
    assert wide["verdict"] == "no clear difference" and "within 2σ" in verdict_words(wide)
    assert paired_gain([1.0, 1.0], [0.0, 0.1])["verdict"] == "loss"
    assert paired_gain([1.0], [2.0])["verdict"] == "too few seeds"
    with pytest.raises(ValueError, match="2 control values but 1"):
        paired_gain([1.0, 2.0], [1.0])


def test_benchmark_json_tdkd_synthfaces():
    res = load_results([TDKD])
    out = compare(res)
    assert out["control"] == "baseline_extra" and out["scale"] == 100.0
    assert {r["model"] for r in out["rows"]} == {"tdkd", "feat"} and out["metrics"] == ["easy", "medium", "hard"]
    hard = next(r for r in out["rows"] if r["model"] == "tdkd" and r["metric"] == "hard")
    raw = json.loads(TDKD.read_text())["models"]
    want = [100 * (d - c) for c, d in zip(raw["baseline_extra"]["hard"], raw["tdkd"]["hard"])]
    assert hard["diffs"] == pytest.approx(want) and hard["seeds"] == [0, 1, 2]
    assert hard["std"] == pytest.approx(sample_std(want)) and hard["verdict"] == "gain"
    easy = next(r for r in out["rows"] if r["model"] == "tdkd" and r["metric"] == "easy")
    assert easy["verdict"] == "no clear difference"
    text = format_compare(out)
    assert "tdkd vs baseline_extra on hard (×100)" in text and "distillation helped" in text
    diag = diagnose(res, out)
    assert diag["term_scales"] == {} and all(r["teacher_beats_student"] for r in diag["teacher"])


def test_flat_kd_gain_benchmarks():
    """kd_gain_<method>_<detector>.json (``distilled`` named after ``method``) and kd_gain_ld.json read as tables."""
    path = REPO / "benchmarks" / "results" / "kd_gain_defeat_retinanet.json"
    raw = json.loads(path.read_text())
    out = compare(load_results([path]))
    assert out["control"] == "control" and {r["model"] for r in out["rows"]} == {"defeat", "feat"}
    assert set(out["metrics"]) == {"voc07_map", "coco_ap"}
    row = next(r for r in out["rows"] if r["model"] == "defeat" and r["metric"] == "voc07_map")
    want = [100 * (d - c) for c, d in zip(raw["control"], raw["distilled"])]
    assert row["diffs"] == pytest.approx(want) and row["seeds"] == raw["seeds"]
    ld = compare(load_results([REPO / "benchmarks" / "results" / "kd_gain_ld.json"]))
    assert {"ld", "kd", "feat", "ta", "ld_no_vlr"} <= {r["model"] for r in ld["rows"]}
    assert {"coco_ap", "ap75", "voc07_map"} <= set(ld["metrics"])


def write_run(root: Path, name: str, seed: int, ap: float, methods=None, kd_scale: float = 1.0) -> Path:
    run = root / name / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"name": name, "train": {"seed": seed},
                                                 "distill": {"methods": methods} if methods else None}))
    (run / "summary.json").write_text(json.dumps({"name": name, "eval": {"mAP": ap, "note": "x"}}))
    rows = []
    for step in range(1, 5):
        row = {"kind": "train", "step": step, "task.cls": 1.0, "task.box": 1.0}
        if methods:
            row["kd.fgfi.imit.p3"] = kd_scale * step
            row["kd.fgfi.imit.p4"] = 0.0
        rows.append(json.dumps(row))
    rows.append(json.dumps({"kind": "eval", "step": 4, "mAP": ap}))
    (run / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    return run


def test_run_directories_and_diagnosis(tmp_path):
    for seed, (c, d) in enumerate([(0.40, 0.45), (0.50, 0.56), (0.30, 0.34)]):
        write_run(tmp_path, "control", seed, c)
        write_run(tmp_path, "distilled", seed, d, methods=["fgfi"], kd_scale=2000.0)
    write_run(tmp_path, "teacher", 0, 0.42)
    res = load_results([tmp_path])
    out = compare(res)
    (row,) = out["rows"]
    assert row["model"] == "distilled" and row["metric"] == "mAP" and row["seeds"] == [0, 1, 2]
    assert row["diffs"] == pytest.approx([5.0, 6.0, 4.0]) and row["verdict"] == "gain"
    scales = term_scales(tmp_path / "distilled" / "seed0" / "metrics.jsonl")
    assert scales["kd.fgfi.imit.p3"]["first"] == pytest.approx(1000.0) and scales["kd.fgfi.imit.p3"]["last"] == 4000.0
    assert scales["kd.fgfi.imit.p3"]["flag"] == "too large" and scales["kd.fgfi.imit.p4"]["flag"] == "always zero"
    diag = diagnose(res, out)
    assert set(diag["term_scales"]) == {"distilled seed 0", "distilled seed 1", "distilled seed 2"}
    beats = {r["student"]: r["teacher_beats_student"] for r in diag["teacher"]}
    assert beats == {"control": True, "distilled": False}  # teacher 0.42 vs means 0.40 / 0.45
    cli = runner.invoke(app, ["compare", str(tmp_path), "--diagnose"])
    assert cli.exit_code == 0, cli.output
    assert "over 1000x the task loss" in cli.stdout and "does NOT beat distilled" in cli.stdout
    small = tmp_path / "small"
    write_run(small, "control", 0, 0.4)
    write_run(small, "distilled", 0, 0.41, methods=["kd"], kd_scale=1e-4)
    assert term_scales(small / "distilled" / "seed0" / "metrics.jsonl")["kd.fgfi.imit.p3"]["flag"] == "too small"
    one = compare(load_results([small]))["rows"][0]
    assert one["verdict"] == "too few seeds"
    js = runner.invoke(app, ["compare", str(small), "--json"])
    assert js.exit_code == 0 and json.loads(js.stdout.splitlines()[-1])["rows"][0]["std"] is None


def test_bad_inputs_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  'x': 1\n}")
    for args, msg in (([str(bad)], "bad.json:2: not valid JSON"),
                      ([str(tmp_path / "nope")], "no such run directory"),
                      ([str(TDKD), "--control", "ctl"], "--control 'ctl' is not among"),
                      ([str(TDKD), "--metric", "mAP"], "metric 'mAP' is not reported")):
        res = runner.invoke(app, ["compare", *args])
        assert res.exit_code == 2 and msg in res.output, (args, res.output)
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["compare", str(empty)])
    assert res.exit_code == 2 and "no summary.json" in res.output
