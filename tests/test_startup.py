"""Start-up without torch (issue 18, item 9): the CLI, `detkd list` and the WIDER evaluator never import torch,
and the torch-free name table `detkd.names` equals the registry and the protocol tables."""
import os
import subprocess
import sys
from pathlib import Path

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
