"""`detkd detect` never loses an output (issue 18, item 5): distinct outputs per input, clashes refused before
the model runs, `--event` for WIDER txt, `--min-score` for PNGs, and the reported count is the count written."""
import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detkd.cli import app
from detkd.detect_outputs import non_wider_events, png_targets, unique_stems, wider_events
from detkd.errors import UserError
from detkd.models.weights import save_model_file
from detkd.registry import TINY_CONFIGS, lookup


def _img(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (48, 64, 3), np.uint8))
    return path


def test_png_targets_flat_in_one_folder_mirrored_across_folders(tmp_path):
    out = tmp_path / "out"
    assert png_targets([tmp_path / "a.jpg", tmp_path / "b.jpg"], out) == [out / "a.png", out / "b.png"]
    got = png_targets([tmp_path / "x" / "a.jpg", tmp_path / "y" / "z" / "a.jpg"], out)
    assert got == [out / "x" / "a.png", out / "y" / "z" / "a.png"]
    with pytest.raises(UserError, match=r"a\.jpg and .*a\.png would both write .*a\.png"):
        png_targets([tmp_path / "a.jpg", tmp_path / "a.png"], out)
    with pytest.raises(UserError, match="would both write"):
        png_targets([tmp_path / "a.jpg", tmp_path / "a.jpg"], out)


def test_wider_events_and_ids(tmp_path):
    imgs = [tmp_path / "0--Parade" / "a.jpg", tmp_path / "misc" / "b.jpg"]
    assert wider_events(imgs) == ["0--Parade", "misc"]
    assert non_wider_events(["0--Parade", "misc", "12--Group"]) == ["misc"]
    assert wider_events(imgs, "3--Riot") == ["3--Riot", "3--Riot"]
    with pytest.raises(UserError, match="3--Riot/a.txt"):
        wider_events([tmp_path / "x" / "a.jpg", tmp_path / "y" / "a.png"], "3--Riot")
    with pytest.raises(UserError, match="--event"):
        wider_events(imgs, "a/b")
    assert unique_stems(imgs) == ["a", "b"]
    with pytest.raises(UserError, match="image id 'a'"):
        unique_stems([tmp_path / "x" / "a.jpg", tmp_path / "y" / "a.jpg"])


@pytest.fixture(scope="module")
def face_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "face.safetensors"
    save_model_file(lookup("model", "retinaface_mnet")(**TINY_CONFIGS["retinaface_mnet"]), path)
    return path


def _detect(*args):
    return CliRunner().invoke(app, ["detect", *map(str, args), "--no-progress"])


def test_face_detect_png_mirrors_tree_and_refuses_clashes(tmp_path, face_model):
    a, b = _img(tmp_path / "in" / "p" / "x.jpg"), _img(tmp_path / "in" / "q" / "x.jpg", 1)
    res = _detect(a, b, "--weights", face_model, "--out-dir", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "p/x.png", "q/x.png"]
    assert "wrote 2 file(s)" in res.stdout
    c = _img(tmp_path / "in" / "p" / "x.png", 2)  # same stem, same folder: refused before anything runs
    res = _detect(a, c, "--weights", face_model, "--out-dir", tmp_path / "clash")
    assert res.exit_code == 2 and "would both write" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "clash").exists()


def test_face_detect_min_score_and_event(tmp_path, face_model):
    src = _img(tmp_path / "x.jpg")
    res = _detect(src, "--weights", face_model, "--out-dir", tmp_path / "hi", "--min-score", "1.0")
    assert res.exit_code == 0, res.output
    assert np.array_equal(cv2.imread(str(tmp_path / "hi" / "x.png")), cv2.imread(str(src)))  # nothing drawn
    res = _detect(src, "--weights", face_model, "--out-dir", tmp_path / "lo", "--min-score", "0.0")
    assert res.exit_code == 0, res.output
    drawn = cv2.imread(str(tmp_path / "lo" / "x.png"))
    from detkd.infer import detect_image
    from detkd.runtime import load_inference_model

    n = len(detect_image(load_inference_model(face_model, "eager", kind="detector")[0], src_rgb(src))["scores"])
    assert n == 0 or not np.array_equal(drawn, cv2.imread(str(src)))
    assert _detect(src, "--weights", face_model, "--out-dir", tmp_path / "bad", "--min-score", "2").exit_code == 2

    res = _detect(src, "--weights", face_model, "--out-dir", tmp_path / "txt", "--format", "widerface-txt")
    assert res.exit_code == 0 and (tmp_path / "txt" / tmp_path.name / "x.txt").is_file()
    assert "not WIDER events" in res.stderr
    res = _detect(src, "--weights", face_model, "--out-dir", tmp_path / "ev", "--format", "widerface-txt",
                  "--event", "0--Parade")
    assert res.exit_code == 0 and (tmp_path / "ev" / "0--Parade" / "x.txt").is_file()
    assert "not WIDER events" not in res.stderr
    res = _detect(src, "--weights", face_model, "--out-dir", tmp_path / "ev2", "--event", "0--Parade")
    assert res.exit_code == 2 and "--event is for --format widerface-txt" in res.stderr


def src_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_object_detect_png_mirrors_tree_and_coco_refuses_shared_ids(tmp_path):
    torch.manual_seed(0)
    save_model_file(lookup("model", "gfl")(**TINY_CONFIGS["gfl"]), tmp_path / "g.safetensors")
    a, b = _img(tmp_path / "in" / "p" / "x.jpg"), _img(tmp_path / "in" / "q" / "x.jpg", 1)
    args = ("--weights", tmp_path / "g.safetensors", "--protocol", "mmdet-gfl")
    res = _detect(a, b, *args, "--out-dir", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert "wrote 2 file(s)" in res.stdout
    assert (tmp_path / "out" / "p" / "x.png").is_file() and (tmp_path / "out" / "q" / "x.png").is_file()
    res = _detect(a, b, *args, "--out-dir", tmp_path / "coco", "--format", "coco")
    assert res.exit_code == 2 and "image id 'x'" in res.stderr
