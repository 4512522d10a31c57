"""The demo's result structure and the kd_gain benchmark's pass/fail rule."""
import json
from pathlib import Path

import numpy as np
import pytest

from detkd.demo import PROTOCOLS, run_demo
from tests._benchmarks import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def load_kd_gain():
    return load_benchmark("kd_gain_tdkd")


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


def _bench_file(path: Path, tdkd_hard, ctl_hard, **extra):
    models = {"tdkd": {"hard": tdkd_hard}, "baseline_extra": {"hard": ctl_hard}}
    path.write_text(json.dumps({"protocols": {p: models for p in PROTOCOLS}, "seeds": list(range(len(tdkd_hard))),
                                "commit": "abcdef0123456789", "schedule": {"baseline_epochs": 30, "extra_epochs": 10},
                                **extra}))


def test_demo_prints_one_seed_beside_the_paired_benchmarks(tmp_path):
    from detkd.demo.faces import benchmark_results_dir, gain_summary

    assert benchmark_results_dir() == ROOT / "benchmarks" / "results"  # the checkout detkd runs from
    run = {m: {p: {"hard": h} for p in PROTOCOLS} for m, h in (("tdkd", 0.45), ("baseline_extra", 0.40))}
    _bench_file(tmp_path / "tdkd_synthfaces.json", [0.51, 0.52, 0.47], [0.48, 0.48, 0.48], threads=2,
                teacher_epochs=90)
    _bench_file(tmp_path / "tdkd_synthfaces_threads1.json", [0.50, 0.50], [0.49, 0.51])  # old writer: no keys
    _bench_file(tmp_path / "tdkd_synthfaces_quick.json", [0.5], [0.4], quick=True)  # a smoke run: not shown
    (tmp_path / "tdkd_synthfaces_broken.json").write_text("{not json")  # unreadable: not shown
    out = "\n".join(gain_summary(run, 0, tmp_path))
    assert "this run: one seed (0), machine- and thread-dependent" in out
    assert f"  {PROTOCOLS[0]}: +5.0\n" in out  # one seed: the number alone
    assert "3-seed paired benchmark (" in out and "tdkd_synthfaces.json: seeds 0, 1, 2; torch threads: 2;" in out
    assert "teacher 90 epochs; commit abcdef01" in out
    assert "10-epoch fine-tunes, not the demo's" in out  # the benchmark's fine-tunes are longer than the demo's
    assert "+2.0 (per seed +3.0, +4.0, -1.0)" in out
    # the file's tag gives the thread count the old writer did not record
    assert "2-seed paired benchmark (" in out and "tdkd_synthfaces_threads1.json: seeds 0, 1; torch threads: 1;" in out
    assert "+0.0 (per seed +1.0, -1.0)" in out
    assert "quick" not in out and "broken" not in out
    assert out.count("paired benchmark (") == 2
    # no benchmarks directory (an installed copy): this run only, nothing about benchmarks
    alone = gain_summary(run, 3, None)
    assert len(alone) == 1 + len(PROTOCOLS) and "benchmark" not in "\n".join(alone)
