"""Start-up without torch (issue 18, item 9): the CLI, `detkd list` and the file evaluators (`eval widerface|voc|coco`,
`convert voc2coco`) never import torch, and the torch-free name table `detkd.names` equals the registry and the
protocol tables."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from synthetic_coco import make_random_coco
from synthetic_voc import make_random_voc
from typer.testing import CliRunner

from detkd import names
from detkd.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _no_torch(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code + "\nassert 'torch' not in sys.modules, 'torch imported'"],
                          capture_output=True, text=True, env=env, cwd=ROOT)


def test_cli_list_help_and_widerface_eval_do_not_import_torch():
    res = _no_torch("import sys\nimport detkd, detkd.cli, detkd.eval.widerface, detkd.data.widerface_gt")
    assert res.returncode == 0, res.stderr
    for argv in (["--help"], ["list"], ["detect", "--help"]):
        res = _no_torch(f"import sys\nfrom detkd.cli import main\nsys.argv = ['detkd', *{argv!r}]\n"
                        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code")
        assert res.returncode == 0, (argv, res.stderr)


def _cli_without_torch(argv: list[str]) -> str:
    """Run ``detkd ARGV`` in a fresh interpreter; assert exit 0 and that torch was never imported; its stdout."""
    res = _no_torch(f"import sys\nfrom detkd.cli import main\nsys.argv = ['detkd', *{argv!r}]\n"
                    "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code")
    assert res.returncode == 0, (argv, res.stderr)
    return res.stdout


def test_file_evaluators_run_without_torch(tmp_path):
    from detkd.data.voc import VOC_CLASSES
    from detkd.eval.widerface import write_txt
    from detkd.data.widerface_gt import SUBSETS, WiderGT, save_gt

    make_random_voc(tmp_path / "VOC", tmp_path / "voc_pred", 6, VOC_CLASSES, seed=3)
    out = _cli_without_torch(["eval", "voc", "--root", str(tmp_path / "VOC"), "--split", "test",
                              "--pred-dir", str(tmp_path / "voc_pred")])
    assert "mAP" in out
    out = _cli_without_torch(["convert", "voc2coco", str(tmp_path / "VOC"), "--split", "test",
                              "--out", str(tmp_path / "voc.json")])
    assert len(json.loads((tmp_path / "voc.json").read_text())["images"]) == 6

    gt, results = make_random_coco(5, seed=2)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = _cli_without_torch(["eval", "coco", "--ann", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "res.json"),
                              "--json"])
    assert set(json.loads(out.splitlines()[-1])) >= {"AP", "AP50", "ARl"}

    boxes = [np.array([[10, 10, 20, 20]], np.int32), np.array([[5, 5, 30, 30]], np.int32)]
    save_gt(WiderGT(events=["0--E"], images=[("0--E", "a"), ("0--E", "b")], boxes=boxes,
                    keep={s: [np.array([0]), np.array([0])] for s in SUBSETS}), tmp_path / "wgt")
    write_txt(tmp_path / "wpred", "0--E", "a", np.array([[10, 10, 30, 30]]), np.array([0.9]))
    write_txt(tmp_path / "wpred", "0--E", "b", np.array([[5, 5, 35, 35]]), np.array([0.8]))
    out = _cli_without_torch(["eval", "widerface", "--pred-dir", str(tmp_path / "wpred"), "--gt-dir",
                              str(tmp_path / "wgt"), "--json"])
    assert json.loads(out.splitlines()[-1])["hard"] > 0


def test_name_table_equals_the_registry():
    live = names.live_names()
    assert live.pop("face_protocols") == names.FACE_PROTOCOLS, "regenerate: python -m detkd.names"
    assert live.pop("det_protocols") == names.DET_PROTOCOLS, "regenerate: python -m detkd.names"
    assert live == names.NAMES, "regenerate: python -m detkd.names > /tmp/n.py && mv /tmp/n.py detkd/names.py"


def test_list_and_detect_help_name_everything():
    out = CliRunner().invoke(app, ["list"]).output.split()
    for section in names.NAMES.values():
        assert set(section) <= set(out)
    assert set(names.FACE_PROTOCOLS + names.DET_PROTOCOLS) <= set(out)
    help_text = "".join(CliRunner().invoke(app, ["detect", "--help"], terminal_width=400).output.split())
    for p in names.FACE_PROTOCOLS + names.DET_PROTOCOLS:
        assert p in help_text
