"""detkd's VOC evaluator against the transcribed py-faster-rcnn ``voc_eval.py`` oracle, the devkit/strict
threshold comparison, the 11-point arange quirk, result files and their errors."""
import numpy as np
import pytest

from detkd.data.voc import VOC_CLASSES
from detkd.eval.voc import (ClassDetections, VOCEvaluator, VOCGroundTruth, evaluate_detections, evaluate_dir,
                            parse_iou_thrs, voc_ap, write_voc_results)
from synthetic_voc import make_random_voc, write_xml
from voc_reference import parse_rec, voc_eval
from voc_reference import voc_ap as ref_voc_ap


@pytest.fixture(scope="module")
def random_set(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocrand")
    ids = make_random_voc(d / "VOC", d / "res", 200, VOC_CLASSES, dets_per_image=25, seed=3)
    recs = {i: parse_rec(d / "VOC" / "Annotations" / f"{i}.xml") for i in ids}
    return d, ids, recs


@pytest.mark.parametrize("metric", ["voc07", "area"])
def test_equals_py_faster_rcnn_oracle(random_set, metric):
    d, ids, recs = random_set
    gt = VOCGroundTruth.load(d / "VOC", "test")
    res = evaluate_dir(d / "res", gt, split="test", metric=metric, iou_compare="strict")
    ref = [voc_eval(str(d / "res" / "comp4_det_test_{}.txt"), recs, ids, c, 0.5, metric == "voc07")[2]
           for c in VOC_CLASSES]
    for c, a in zip(VOC_CLASSES, ref):
        assert abs(res["per_class"][c] - a) <= 1e-12, c
    assert abs(res["mAP"] - np.mean(ref)) <= 1e-12
    assert 0.05 < res["mAP"] < 0.95  # a non-trivial set: both TPs and FPs everywhere
    assert res["missing_files"] == [] and res["no_gt"] == []


def test_in_memory_equals_written_files(random_set, tmp_path):
    d, ids, _ = random_set
    gt = VOCGroundTruth.load(d / "VOC", "test")
    rng = np.random.default_rng(0)
    outputs = []
    for k in range(len(ids)):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 300, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(5, 150, (n, 2))], 1).astype(np.float32)
        outputs.append({"boxes": boxes, "scores": rng.uniform(0, 1, n).astype(np.float32),
                        "labels": rng.integers(1, 21, n)})
    ev = VOCEvaluator(gt, metric="area")
    ev.process([{"image_id": i} for i in ids[:100]], outputs[:100])
    ev.process([{"image_id": i} for i in ids[100:]], outputs[100:])
    write_voc_results(tmp_path / "w", ids, outputs)
    a, b = ev.details(), evaluate_dir(tmp_path / "w", gt, metric="area")
    assert a["per_class"] == b["per_class"] and a["mAP"] == b["mAP"]
    flat = ev.evaluate()  # what the trainer logs: flat floats
    assert flat["mAP"] == a["mAP"] and flat["AP/dog"] == a["per_class"]["dog"] and len(flat) == 21
    ev.reset()
    assert ev.evaluate()["mAP"] == 0.0


def _one_image_gt(boxes, difficult=None, labels=None):
    n = len(boxes)
    return VOCGroundTruth(["a"], ("x",), [np.asarray(boxes, float).reshape(n, 4)],
                          [np.zeros(n, np.int64) if labels is None else np.asarray(labels)],
                          [np.zeros(n, bool) if difficult is None else np.asarray(difficult)])


def _dets(boxes, scores):
    return ClassDetections(np.zeros(len(scores), np.int64), np.asarray(scores, float), np.asarray(boxes, float))


def test_iou_exactly_half_devkit_vs_strict():
    # GT 1..10 x 1..10 (100 px with +1); det 1..10 x 1..5 (50 px): IoU = 50 / 100 = 0.5 exactly.
    gt = _one_image_gt([[1, 1, 10, 10]])
    dets = [_dets([[1, 1, 10, 5]], [0.9])]
    assert evaluate_detections(gt, dets, "area", "devkit")["mAP"] == 1.0
    assert evaluate_detections(gt, dets, "area", "strict")["mAP"] == 0.0


def test_difficult_best_gt_ignores_detection_and_duplicates_are_fp():
    # det 0 best-overlaps the difficult GT (ignored, even though it also overlaps the easy GT);
    # det 1 hits the easy GT (TP); det 2 duplicates it (FP). npos = 1, prec after det1 = 1 -> AP 1 then FP.
    gt = _one_image_gt([[1, 1, 20, 20], [3, 1, 22, 20]], difficult=[False, True])
    dets = [_dets([[3, 1, 22, 20], [1, 1, 20, 20], [1, 1, 20, 20]], [0.9, 0.8, 0.7])]
    res = evaluate_detections(gt, dets, "area")
    assert res["mAP"] == 1.0
    npos_only_fp = evaluate_detections(gt, [_dets([[3, 1, 22, 20]], [0.9])], "area")
    assert npos_only_fp["mAP"] == 0.0  # ignored detection: recall stays 0


def test_voc07_arange_quirk():
    # recall exactly 0.3 (3/10) does not count for t = np.arange(...)[3] = 0.30000000000000004
    rec = np.array([0.1, 0.2, 0.3])
    prec = np.array([1.0, 1.0, 1.0])
    assert voc_ap(rec, prec, "voc07") == ref_voc_ap(rec, prec, True)
    assert voc_ap(rec, prec, "voc07") == pytest.approx(3 / 11)
    assert voc_ap(rec, prec, "area") == pytest.approx(0.3)


def test_iou_thrs_average():
    assert parse_iou_thrs("0.5:0.95") == tuple(np.linspace(0.5, 0.95, 10))
    gt = _one_image_gt([[1, 1, 100, 100]])
    dets = [_dets([[1, 1, 100, 80]], [0.9])]  # IoU 0.8
    res = evaluate_detections(gt, dets, "area", iou_thrs=parse_iou_thrs("0.5:0.95"))
    assert res["mAP"] == pytest.approx(0.7)  # thresholds 0.5..0.8 pass (7 of 10)
    with pytest.raises(ValueError, match="iou-thrs"):
        parse_iou_thrs("1.5")


def test_missing_file_is_ap_zero_and_reported(random_set, tmp_path):
    d, ids, _ = random_set
    for f in (d / "res").glob("*.txt"):
        if not f.name.endswith("_dog.txt"):
            (tmp_path / f.name.replace("comp4_det_test_", "")).write_text(f.read_text())
    res = evaluate_dir(tmp_path, VOCGroundTruth.load(d / "VOC", "test"), metric="voc07")
    assert res["missing_files"] == ["dog"] and res["per_class"]["dog"] == 0.0
    assert res["no_detections"] == ["dog"]


@pytest.mark.parametrize("line,msg", [
    ("000001 0.5 1 2 3", "expected 'image_id score"),
    ("000001 0.5 1 2 3 x", "non-numeric"),
    ("nosuchimage 0.5 1 2 3 4", "image id 'nosuchimage'"),
    ("000001 nan 1 2 3 4", "non-finite"),
])
def test_bad_result_lines_name_file_and_line(random_set, tmp_path, line, msg):
    d, _, _ = random_set
    (tmp_path / "cat.txt").write_text("000000 0.9 1 1 5 5\n" + line + "\n")
    with pytest.raises(ValueError, match=msg) as e:
        evaluate_dir(tmp_path, VOCGroundTruth.load(d / "VOC", "test"))
    assert "cat.txt:2" in str(e.value)


def test_unknown_class_file_and_duplicate_class(random_set, tmp_path):
    d, _, _ = random_set
    gt = VOCGroundTruth.load(d / "VOC", "test")
    (tmp_path / "unicorn.txt").write_text("")
    with pytest.raises(ValueError, match="unicorn.txt: not a results file of a known class"):
        evaluate_dir(tmp_path, gt)
    (tmp_path / "unicorn.txt").unlink()
    (tmp_path / "cat.txt").write_text("")
    (tmp_path / "comp4_det_test_cat.txt").write_text("")
    with pytest.raises(ValueError, match="two results files for class 'cat'"):
        evaluate_dir(tmp_path, gt, split="test")


def test_writer_round_trips_voc_pixels(tmp_path):
    # a VOC box read by detkd (x1 = xmin - 1, x2 = xmax) is written back as the same VOC box
    write_xml(tmp_path / "a.xml", 50, 50, [("cat", (3, 4, 20, 30), False)])
    from detkd.data.voc import parse_voc_xml, to_detkd_boxes

    _, _, objs = parse_voc_xml(tmp_path / "a.xml")
    boxes = to_detkd_boxes(np.array([objs[0].box]))
    np.testing.assert_array_equal(boxes, [[2, 3, 20, 30]])
    write_voc_results(tmp_path / "r", ["a"], [{"boxes": boxes, "scores": [0.5], "labels": [8]}])
    assert (tmp_path / "r" / "cat.txt").read_text() == "a 0.5 3.0 4.0 20.0 30.0\n"
    assert (tmp_path / "r" / "dog.txt").read_text() == ""


def test_ties_and_degenerate_boxes_match_oracle(tmp_path):
    # identical GT boxes (argmax takes the first: here the difficult one), integer detections that tie at
    # exactly 0.5 IoU, a zero-area detection, and an image without GT of the class
    root = tmp_path / "V"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    write_xml(root / "Annotations" / "a.xml", 100, 100, [("cat", (1, 1, 10, 10), True), ("cat", (1, 1, 10, 10), False),
                                                       ("cat", (30, 30, 60, 60), False)])
    write_xml(root / "Annotations" / "b.xml", 100, 100, [("dog", (5, 5, 50, 50), False)])
    (root / "ImageSets" / "Main" / "test.txt").write_text("a\nb\n")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "cat.txt").write_text("a 0.9 1 1 10 10\na 0.8 1 1 10 5\nb 0.7 1 1 10 10\na 0.6 30 30 60 60\n"
                                            "a 0.5 40 40 40 40\na 0.4 30 30 60 45\n")
    (tmp_path / "r" / "dog.txt").write_text("b 0.3 5 5 50 27\n")
    recs = {i: parse_rec(root / "Annotations" / f"{i}.xml") for i in ("a", "b")}
    gt = VOCGroundTruth.load(root, "test")
    for metric in ("voc07", "area"):
        res = evaluate_dir(tmp_path / "r", gt, metric=metric, iou_compare="strict")
        for c in ("cat", "dog"):
            ref = voc_eval(str(tmp_path / "r" / "{}.txt"), recs, ["a", "b"], c, 0.5, metric == "voc07")[2]
            assert res["per_class"][c] == ref, (metric, c)
