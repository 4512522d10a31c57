"""Every `--json` command prints exactly one JSON object (its last stdout line), nothing else on stdout."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer.main
from typer.testing import CliRunner

from detkd.cli import app
from detkd.data.facerec import write_bin
from detkd.data.synthfaces import write_synthfaces
from detkd.models.facerec import mobilefacenet
from detkd.models.retinaface import retinaface_mnet
from detkd.models.weights import make_card, save_model_file, write_card
from detkd.data.voc import VOC_CLASSES
from synthetic_coco import make_random_coco
from synthetic_voc import make_random_voc

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def json_commands() -> set[str]:
    """Every CLI command path that has a ``--json`` option, e.g. ``"eval verification"``."""
    found = set()

    def walk(cmd, path):
        for p in getattr(cmd, "params", []):
            if "--json" in getattr(p, "opts", []):
                found.add(" ".join(path))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("json")
    write_synthfaces(root / "sf", seed=3, n_train=2, n_val=2, image_size=64)
    torch.manual_seed(0)
    save_model_file(retinaface_mnet(width=0.25), root / "det.safetensors", task="detection")
    config = {"name": "mobilefacenet", "input_size": 32, "width": 0.25}
    face = mobilefacenet(input_size=32, width=0.25)
    sd = face.state_dict()
    from safetensors.torch import save_file

    save_file(sd, str(root / "face.safetensors"))
    write_card(root / "face.safetensors", make_card(config, sd, task="facerec"))
    rng = np.random.default_rng(0)
    write_bin(root / "v.bin", rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8), [True, False] * 5, fmt=".png")
    runner.invoke(app, ["detect", *map(str, sorted((root / "sf" / "val" / "images").rglob("*.jpg"))),
                        "--weights", str(root / "det.safetensors"), "--out-dir", str(root / "pred"),
                        "--format", "widerface-txt"])
    make_random_voc(root / "V", root / "vocres", 10, VOC_CLASSES, 5, seed=2)
    gt, results = make_random_coco(8, seed=4)
    (root / "gt.json").write_text(json.dumps(gt))
    (root / "res.json").write_text(json.dumps(results))
    return root


def invocations(root) -> dict[str, list[str]]:
    sf = root / "sf" / "val"
    return {
        "eval widerface": ["eval", "widerface", "--pred-dir", str(root / "pred"), "--gt-dir", str(sf / "gt"), "--json"],
        "eval detector": ["eval", "detector", "--weights", str(root / "det.safetensors"), "--images-dir",
                          str(sf / "images"), "--gt-dir", str(sf / "gt"), "--json"],
        "eval verification": ["eval", "verification", "--weights", str(root / "face.safetensors"), "--bin",
                              str(root / "v.bin"), "--json"],
        "eval voc": ["eval", "voc", "--root", str(root / "V"), "--split", "test", "--pred-dir", str(root / "vocres"),
                     "--json"],
        "eval coco": ["eval", "coco", "--ann", str(root / "gt.json"), "--pred", str(root / "res.json"), "--json"],
        "compare": ["compare", str(REPO / "benchmarks" / "results" / "tdkd_synthfaces.json"), "--diagnose", "--json"],
    }


def test_every_json_command_is_covered(files):
    assert json_commands() == set(invocations(files)), "add the new --json command to invocations()"


@pytest.mark.parametrize("command", ["eval widerface", "eval detector", "eval verification", "eval voc",
                                     "eval coco", "compare"])
def test_json_output_is_one_object(files, command):
    res = runner.invoke(app, invocations(files)[command])
    assert res.exit_code == 0, f"{command}: {res.output}\n{res.exception!r}"
    lines = [line for line in res.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"{command} printed {len(lines)} lines on stdout:\n{res.stdout}"
    obj = json.loads(lines[-1])
    assert isinstance(obj, dict) and obj
    assert any(isinstance(v, float) for v in obj.values()), obj  # at least one score
