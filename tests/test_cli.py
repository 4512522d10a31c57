"""The `detkd` command line end to end on a tiny SynthFaces copy: train, distil, export, detect, evaluate."""
import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from detkd.cli import app
from detkd.data.synthfaces import write_synthfaces
from detkd.engine.checkpoint import load_checkpoint
from detkd.eval.widerface import read_pred_dir

runner = CliRunner()
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def cli(*args, ok=True):
    res = runner.invoke(app, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, f"detkd {' '.join(map(str, args))} failed:\n{res.output}\n{res.exception!r}"
    return res


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("sf")
    write_synthfaces(root, seed=3, n_train=6, n_val=3, image_size=128)
    return root


def tiny_overrides(root, out, name):
    # SynthFaces is WIDER layout, so the `widerface` reader serves a copy of any size
    return [f"name={name}", "data.name=widerface", f"data.root={root}", "data.img_size=128",
            "train.batch_size=2", "train.max_iters=2", f"train.out_dir={out}", "train.progress=false",
            "train.tensorboard=false"]


def test_help_and_list():
    out = cli("--help").output
    for cmd in ("train", "eval", "detect", "export", "import-weights", "demo", "data", "list"):
        assert cmd in out
    listing = cli("list").output
    for name in ("retinaface_mnet", "retinaface_r50", "mobilefacenet", "tdkd", "feat", "kd", "synthfaces",
                 "biubug6-origin", "tdkd-1600", "tdkd/retinaface_mnet075_to_mnet025_synthfaces"):
        assert name in listing
    methods = cli("list", "methods").output.split()
    objectives = cli("list", "objectives").output.split()
    assert "tdkd" in methods and "arcface" not in methods  # detection methods and face objectives apart
    assert {"arcface", "margin_distillation"} <= set(objectives) and "tdkd" not in objectives
    assert "widerface" in cli("list", "evaluators").output.split()


def test_unknown_config_key_is_a_clear_error():
    res = cli("train", "retinaface/mnet025_synthfaces", "optim.lrr=0.1", ok=False)
    assert res.exit_code == 2
    assert "optim.lr" in res.output and "did you mean" in res.output


def test_a_face_objective_as_detection_method_is_a_clear_error(tmp_path):
    teacher = Path(__file__).resolve().parents[1] / "detkd" / "assets" / "synthfaces_teacher_mnet075.safetensors"
    res = cli("train", "tdkd/retinaface_mnet075_to_mnet025_synthfaces", "distill.methods=[arcface]",
              f"distill.teacher_weights={teacher}", f"train.out_dir={tmp_path}", ok=False)
    assert res.exit_code == 2, res.output
    assert "'arcface' is a face-recognition objective, not a detection distillation method" in res.output


def test_train_distill_export_detect_eval(tiny, tmp_path):
    runs = tmp_path / "runs"
    cli("train", "retinaface/mnet025_synthfaces", *tiny_overrides(tiny, runs, "student"), "--no-eval")
    cli("export", runs / "student", "--out", tmp_path / "student.safetensors")
    cli("train", "retinaface/mnet075_tasks_synthfaces", *tiny_overrides(tiny, runs, "teacher"), "--no-eval")
    cli("export", runs / "teacher", "--out", tmp_path / "teacher.safetensors")

    cli("train", "tdkd/retinaface_mnet075_to_mnet025_synthfaces", *tiny_overrides(tiny, runs, "tdkd"),
        f"train.init_weights={tmp_path / 'student.safetensors'}",
        f"distill.teacher_weights={tmp_path / 'teacher.safetensors'}")
    # the training checkpoint holds student + adapters, never the teacher
    state = load_checkpoint(runs / "tdkd" / "last.pt")
    prefixes = {k.split(".", 1)[0] for k in state["task"]}
    assert prefixes <= {"student", "distiller", "kd_step"}, prefixes
    assert not any("conv_dw_3x3" in k for k in state["task"])  # only the teacher has task convs
    assert any(k.startswith("distiller.") for k in state["task"])
    # the export is the student only: exactly the student's tensors
    cli("export", runs / "tdkd", "--out", tmp_path / "tdkd.safetensors")
    assert set(load_file(tmp_path / "tdkd.safetensors")) == set(load_file(tmp_path / "student.safetensors"))

    images = sorted((tiny / "val" / "images").rglob("*.jpg"))
    cli("detect", *images, "--weights", tmp_path / "tdkd.safetensors", "--protocol", "biubug6-origin",
        "--out-dir", tmp_path / "pred", "--format", "widerface-txt")
    preds = read_pred_dir(tmp_path / "pred")
    assert len(preds) == len(images)
    res = cli("eval", "widerface", "--pred-dir", tmp_path / "pred", "--gt-dir", tiny / "val" / "gt", "--json")
    ap = json.loads(res.output.strip().splitlines()[-1])
    assert set(ap) == {"easy", "medium", "hard"} and all(0.0 <= v <= 1.0 or v != v for v in ap.values())
    cli("detect", images[0], "--weights", tmp_path / "tdkd.safetensors", "--out-dir", tmp_path / "png")
    assert list((tmp_path / "png").glob("*.png"))


def test_import_weights_real_checkpoint(tmp_path):
    src = SHARED / "weights" / "retinaface_mnet025_leaky.pth"
    if not src.is_file():
        pytest.skip(f"real checkpoint not available: {src}")
    res = cli("import-weights", "retinaface-biubug6", src, "--activation", "leaky0.1",
              "--out", tmp_path / "mnet.safetensors")
    assert "leaky0.1" in res.output
    card = json.loads((tmp_path / "mnet.json").read_text())
    assert card["model"]["activation"] == "leaky0.1"
    bad = cli("import-weights", "retinaface-biubug6", src, "--activation", "gelu", "--out", tmp_path / "x",
              ok=False)
    assert bad.exit_code == 2
