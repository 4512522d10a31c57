"""The demo's result structure and the kd_gain benchmark's pass/fail rule."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from detkd.demo import PROTOCOLS, run_demo

ROOT = Path(__file__).resolve().parents[1]


def load_kd_gain():
    spec = importlib.util.spec_from_file_location("kd_gain", ROOT / "benchmarks" / "kd_gain_tdkd.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def per_model(tdkd, ctl, feat):
    out = {m: {"easy": [0.1] * 3, "medium": [0.1] * 3, "hard": [0.1] * 3} for m in ("teacher", "baseline")}
    for name, hard in (("tdkd", tdkd), ("baseline_extra", ctl), ("feat", feat)):
        out[name] = {"easy": [0.0] * 3, "medium": [0.0] * 3, "hard": hard}
    return out


def test_kd_gain_verdict_rule():
    kd_gain = load_kd_gain()
    # gain 4.0 AP, larger std = std([0.42, 0.44, 0.46]) = 1.633 AP -> 2 std = 3.27: met; TDKD >= feat
    v = kd_gain.verdict(per_model([0.42, 0.44, 0.46], [0.40, 0.40, 0.40], [0.41, 0.41, 0.41]))
    assert v["gain_over_control"] == pytest.approx(4.0)
    assert v["two_std"] == pytest.approx(2 * 100 * np.std([0.42, 0.44, 0.46]))
    assert v["gain_ok"] and v["feat_ok"]
    assert v["paired_gain"] == pytest.approx([2.0, 4.0, 6.0])
    assert v["paired_two_std"] == pytest.approx(2 * np.std([2.0, 4.0, 6.0])) and v["paired_ok"]
    # same mean gain with a noisier control: the bar is the larger of the two stds -> not met; the paired
    # gains (7, 4, 1) spread as widely -> not met either
    v = kd_gain.verdict(per_model([0.42, 0.44, 0.46], [0.35, 0.40, 0.45], [0.50, 0.50, 0.50]))
    assert not v["gain_ok"] and not v["feat_ok"] and not v["paired_ok"]
    # a shared baseline spread (both rows move together per seed): unpaired not met, paired met
    v = kd_gain.verdict(per_model([0.34, 0.44, 0.54], [0.30, 0.40, 0.50], [0.0] * 3))
    assert not v["gain_ok"] and v["paired_ok"] and v["paired_two_std"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow
def test_demo_quick_writes_both_protocols(tmp_path):
    res = run_demo(tmp_path / "demo", quick=True)
    assert set(res) == {"teacher", "baseline", "baseline_extra", "tdkd", "feat"}
    for r in res.values():
        for p in PROTOCOLS:
            assert set(r[p]) == {"easy", "medium", "hard"}
        assert r["hard"] == r[PROTOCOLS[0]]["hard"]  # the headline protocol is also at the top level
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["tdkd"][PROTOCOLS[1]] == pytest.approx(res["tdkd"][PROTOCOLS[1]])
    table = (tmp_path / "demo" / "results.md").read_text()
    assert PROTOCOLS[1] in table and table.count("\n") == 7  # header, rule, five models
    # (3 iterations log no loss rows, so the quick demo has no loss_curves.png)
    assert (tmp_path / "demo" / "pr_curves.png").stat().st_size > 1000


def test_demo_missing_baseline_weights_fails_before_training(tmp_path):
    missing = tmp_path / "nowhere" / "student.safetensors"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_demo(tmp_path / "demo", quick=True, baseline_weights=missing)
    assert not (tmp_path / "demo").exists()
