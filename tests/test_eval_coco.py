"""COCO evaluation through faster-coco-eval equals pycocotools; results writer and error messages."""
import contextlib
import copy
import io
import json

import numpy as np
import pytest

from detkd.data.coco import categories_of
from detkd.eval.coco import STAT_KEYS, COCOEvaluator, coco_stats, evaluate_files, write_coco_results
from synthetic_coco import make_random_coco


def _pycocotools_stats(gt, results):
    pytest.importorskip("pycocotools", reason="pycocotools is in the test extra only")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = copy.deepcopy(gt)
        g.createIndex()
        d = g.loadRes(copy.deepcopy(results))
        ev = COCOeval(g, d, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return dict(zip(STAT_KEYS, map(float, ev.stats)))


def test_faster_coco_eval_equals_pycocotools():
    gt, results = make_random_coco(120, dets_per_image=12, seed=5)
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert any(a["bbox"][2] * a["bbox"][3] < 32 ** 2 for a in gt["annotations"])
    with_gt = {a["image_id"] for a in gt["annotations"]}
    assert len(with_gt) < len(gt["images"])  # images without GT
    assert {r["image_id"] for r in results} - with_gt  # and detections on some of them
    ours, ref = coco_stats(gt, results), _pycocotools_stats(gt, results)
    assert 0.05 < ours["AP50"] < 0.95
    for k in STAT_KEYS:
        assert ours[k] == pytest.approx(ref[k], abs=1e-12), k


def test_evaluator_and_writer_round_trip(tmp_path):
    gt, _ = make_random_coco(30, dets_per_image=0, seed=1)
    cats = categories_of(gt)
    assert cats.cat_ids == (1, 3, 7, 12, 40)
    # perfect detections built from the GT through the model-output convention (labels 1..K, xyxy)
    by_image = {im["id"]: {"boxes": [], "scores": [], "labels": []} for im in gt["images"]}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        o = by_image[a["image_id"]]
        o["boxes"].append([x, y, x + w, y + h])
        o["scores"].append(0.5 + 0.001 * a["id"])
        o["labels"].append(cats.label_of[a["category_id"]])
    ids = list(by_image)
    outs = [{k: np.asarray(v, float) for k, v in by_image[i].items()} for i in ids]
    ev = COCOEvaluator(gt)
    ev.process([{"image_id": i} for i in ids], outs)
    stats = ev.evaluate()
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP"] == pytest.approx(1.0)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    write_coco_results(tmp_path / "res.json", ids, outs, cats)
    assert evaluate_files(tmp_path / "gt.json", tmp_path / "res.json") == stats


@pytest.mark.parametrize("entry,msg", [
    ({"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}, "unknown image id 999"),
    ({"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.5}, "unknown category id 2"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5], "score": 0.5}, "bbox is not 4 finite"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": None}, "score is not a finite"),
])
def test_bad_results_entry_is_named(tmp_path, entry, msg):
    gt, results = make_random_coco(5, seed=2)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results[:3] + [entry]))
    with pytest.raises(ValueError, match=msg) as e:
        evaluate_files(tmp_path / "gt.json", tmp_path / "res.json")
    assert "res.json: entry [3]" in str(e.value)


def test_duplicated_image_id_is_named(tmp_path):
    gt, results = make_random_coco(5, seed=2)
    gt["images"].append(dict(gt["images"][1]))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    with pytest.raises(ValueError, match=r"gt.json: images\[5\] repeats image id 2"):
        evaluate_files(tmp_path / "gt.json", tmp_path / "res.json")
