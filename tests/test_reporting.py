"""The one writer of benchmark result tables (detkd/reporting.py), checked against the committed results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from detkd.reporting import kd_gain_table, markdown_table, mean_std, write_results
from tests._benchmarks import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def test_mean_std_and_tables():
    assert mean_std([0.5, 0.7]) == "60.0 ± 10.0"  # population std
    assert mean_std([0.123], digits=2) == "12.30 ± 0.00" and mean_std([]) == "–"
    assert markdown_table(["a", "b"], [[1, "x"]]) == ["| a | b |", "|---|---|", "| 1 | x |"]
    rows = kd_gain_table({"s": {"ap": [0.5, 0.7]}, "t": {"ap": [0.9]}}, ["ap"], models=["t", "gone", "s"],
                         titles={"t": "teacher"}, extra={"s": [2]}, extra_header=["n"], metric_titles=["AP"])
    assert rows == ["| model | AP | n |", "|---|---|---|", "| teacher | 90.0 ± 0.0 |", "| s | 60.0 ± 10.0 | 2 |"]


def test_write_results(tmp_path):
    js, md = write_results(tmp_path / "r", "x", {"a": 1}, ["# t", "", "| a |"])
    assert json.loads(js.read_text()) == {"a": 1} and md.read_text() == "# t\n\n| a |\n"


def test_facerec_report_reproduces_the_committed_table(tmp_path):
    if not (RESULTS / "facerec_synthids.json").is_file():
        pytest.skip("no committed facerec_synthids results")
    load_benchmark("facerec_kd").write_report(json.loads((RESULTS / "facerec_synthids.json").read_text()), tmp_path)
    assert (tmp_path / "facerec_synthids.md").read_text() == (RESULTS / "facerec_synthids.md").read_text()


def test_tdkd_table_reproduces_the_committed_rows():
    if not (RESULTS / "tdkd_synthfaces.json").is_file():
        pytest.skip("no committed tdkd_synthfaces results")
    res = json.loads((RESULTS / "tdkd_synthfaces.json").read_text())
    committed = (RESULTS / "tdkd_synthfaces.md").read_text()
    kd_gain = load_benchmark("kd_gain_tdkd")
    for p, per_model in res["protocols"].items():
        lines = kd_gain.table(per_model, "T")[2:]  # without the title
        assert "\n".join(lines) in committed, p
