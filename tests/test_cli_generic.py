"""`detkd eval voc`, `detkd eval coco`, `detkd convert voc2coco`, `detkd data synthshapes` end to end."""
import json

import pytest
from typer.testing import CliRunner

from detkd.cli import app
from detkd.data.voc import VOC_CLASSES
from detkd.eval.coco import STAT_KEYS
from detkd.eval.voc import VOCGroundTruth, evaluate_dir
from synthetic_coco import make_random_coco
from synthetic_voc import make_random_voc

runner = CliRunner()


def cli(*args, code=0):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, f"detkd {' '.join(map(str, args))}: {res.output}\n{res.exception!r}"
    return res


@pytest.fixture(scope="module")
def vocset(tmp_path_factory):
    d = tmp_path_factory.mktemp("clivoc")
    make_random_voc(d / "V", d / "res", 60, VOC_CLASSES, 15, seed=2)
    return d


def test_eval_voc_json(vocset):
    out = cli("eval", "voc", "--root", vocset / "V", "--split", "test", "--pred-dir", vocset / "res",
              "--metric", "area", "--json").output
    res = json.loads(out.strip().splitlines()[-1])
    assert res["metric"] == "area" and set(res["per_class"]) == set(VOC_CLASSES)
    ref = evaluate_dir(vocset / "res", VOCGroundTruth.load(vocset / "V", "test"), "test", "area")
    assert res["mAP"] == ref["mAP"]
    multi = json.loads(cli("eval", "voc", "--root", vocset / "V", "--split", "test", "--pred-dir", vocset / "res",
                           "--iou-thrs", "0.5:0.95", "--json").output.strip().splitlines()[-1])
    assert len(multi["mAP_per_iou"]) == 10 and multi["mAP"] < res["mAP"]
    text = cli("eval", "voc", "--root", vocset / "V", "--split", "test", "--pred-dir", vocset / "res").output
    assert "mAP" in text and "aeroplane" in text


def test_eval_voc_errors_are_one_line(vocset, tmp_path):
    (tmp_path / "cat.txt").write_text("000001 0.5 1 2 3\n")
    res = cli("eval", "voc", "--root", vocset / "V", "--split", "test", "--pred-dir", tmp_path, code=2)
    assert "cat.txt:1: expected 'image_id score" in res.output
    (tmp_path / "cat.txt").write_text("000001 0.5 1 2 3 4\n")
    res = cli("eval", "voc", "--root", vocset / "V", "--split", "test", "--pred-dir", tmp_path, "--json")
    assert "scored AP 0" in res.output and "aeroplane" in res.output  # 19 missing class files are named
    cli("eval", "voc", "--root", vocset / "V", "--split", "test", "--pred-dir", tmp_path, "--metric", "x", code=2)


def test_eval_coco_json(tmp_path):
    gt, results = make_random_coco(20, seed=4)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    out = cli("eval", "coco", "--ann", tmp_path / "gt.json", "--pred", tmp_path / "res.json", "--json").output
    stats = json.loads(out.strip().splitlines()[-1])
    assert list(stats) == list(STAT_KEYS) and 0 < stats["AP50"] <= 1
    res = cli("eval", "coco", "--ann", tmp_path / "gt.json", "--pred", tmp_path / "nope.json", code=2)
    assert "nope.json" in res.output


def test_convert_voc2coco(vocset, tmp_path):
    cli("convert", "voc2coco", vocset / "V", "--split", "test", "--out", tmp_path / "c.json")
    data = json.loads((tmp_path / "c.json").read_text())
    assert len(data["images"]) == 60 and len(data["categories"]) == 20


def test_data_synthshapes(tmp_path):
    out = cli("data", "synthshapes", tmp_path / "ss", "--seed", "1", "--train", "3", "--val", "2").output
    assert "SynthShapes written" in out
    assert len((tmp_path / "ss" / "ImageSets" / "Main" / "val.txt").read_text().split()) == 2
    assert len(list((tmp_path / "ss" / "JPEGImages").glob("*.jpg"))) == 5
