"""VOC and COCO readers on the real files under ../shared/data, the generic sample pipeline, voc2coco, and the
reader errors."""
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from detkd.data.coco import COCODetection, read_coco
from detkd.data.detection import ResizeConfig, keep_ratio_scale
from detkd.data.voc import VOC_CLASSES, VOCDetection, parse_voc_xml, read_voc
from detkd.data.voc2coco import records_to_coco, voc_to_coco
from detkd.eval.coco import COCOEvaluator
from detkd.eval.voc import VOCEvaluator, VOCGroundTruth, evaluate_dir
from synthetic_voc import make_random_voc, write_xml

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VOC_MINI = SHARED / "voc_mini"
COCO_100 = SHARED / "coco_val2014_100" / "instances_val2014_100.json"
need_voc = pytest.mark.skipif(not VOC_MINI.is_dir(), reason=f"real VOC files not found at {VOC_MINI}")
need_coco = pytest.mark.skipif(not COCO_100.is_file(), reason=f"real COCO annotations not found at {COCO_100}")


@need_voc
def test_voc_mini_counts():
    recs = read_voc(VOC_MINI, "val")
    assert len(recs) == 100
    assert sum(len(r.labels) for r in recs) == 273
    assert sum(int(r.difficult.sum()) for r in recs) == 38
    assert set(np.concatenate([r.labels for r in recs]).tolist()) == set(range(1, 21))
    assert recs[0].image_id == "2007_000027" and (recs[0].width, recs[0].height) == (486, 500)
    np.testing.assert_array_equal(recs[0].boxes, [[173, 100, 349, 351]])  # XML 174 101 349 351


@need_voc
def test_voc_mini_gt_as_detections_scores_one():
    from detkd.eval.base import build_evaluator

    from detkd.registry import lookup

    ds = lookup("dataset", "voc")(root=str(VOC_MINI), split="val", val_splits=["val"])
    recs = ds.records
    img, meta = ds[0]
    assert img.dtype == np.uint8 and img.shape == (500, 486, 3) and meta["image_id"] == "2007_000027"
    ev = build_evaluator("voc", dataset=ds, metric="voc07")
    assert isinstance(ev, VOCEvaluator)
    ev.process([{"image_id": r.image_id} for r in recs],
               [{"boxes": r.boxes, "scores": np.linspace(0.9, 0.1, len(r.labels)), "labels": r.labels} for r in recs])
    res = ev.evaluate()
    assert all(res[f"AP/{c}"] == pytest.approx(1.0, abs=1e-12) for c in VOC_CLASSES)  # 11 x (1/11)


@need_voc
def test_voc_dataset_resize_flip_and_determinism():
    ds = VOCDetection(VOC_MINI, "val", resize=ResizeConfig((600, 400), 1000), augment=True, seed=7)
    rec = ds.records[0]
    img, tgt, meta = ds[0]
    assert meta["image_id"] == "2007_000027" and meta["orig_size"] == (500, 486)
    h, w = meta["size"]
    assert tuple(img.shape) == (3, h, w) and min(h, w) in (600, 400)
    box = rec.boxes[0] * [w / 486, h / 500, w / 486, h / 500]  # per-axis factors of the rounded size
    if meta["flipped"]:
        box = np.array([w - box[2], box[1], w - box[0], box[3]])
    np.testing.assert_allclose(tgt["boxes"][0].numpy(), box, rtol=1e-5, atol=1e-3)
    again = ds[0]
    assert again[2] == meta and (again[0] == img).all()
    seen = set()
    for e in range(8):
        ds.set_epoch(e)
        seen.add((ds[0][2]["flipped"], ds[0][2]["size"]))
    assert len(seen) >= 3  # flip and multi-scale both vary over epochs
    # difficult objects go to ignore_boxes unless trained on
    k = next(i for i, r in enumerate(ds.records) if r.difficult.any())
    n_diff = int(ds.records[k].difficult.sum())
    assert len(ds[k][1]["ignore_boxes"]) == n_diff
    from detkd.data.loader import collate_detection

    images, targets, metas = collate_detection([ds[0], ds[1], ds[2]])  # unequal sizes, padded to 32
    assert images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
    assert [m["image_size"] for m in metas] == [m["size"] for m in metas] and len(targets) == 3
    ds_all = VOCDetection(VOC_MINI, "val", train_difficult=True)
    assert len(ds_all[k][1]["boxes"]) == len(ds.records[k].labels) and len(ds_all[k][1]["ignore_boxes"]) == 0


def test_keep_ratio_scale():
    assert keep_ratio_scale(500, 375, 600, 1000) == 600 / 375
    assert keep_ratio_scale(300, 1000, 600, 1000) == 1.0  # long side would be 2000 -> capped
    assert keep_ratio_scale(480, 640, 800, 1333) == 800 / 480


@need_voc
def test_voc_mini_voc2coco_readers_agree(tmp_path):
    data = voc_to_coco(VOC_MINI, "val")
    assert len(data["images"]) == 100 and len(data["annotations"]) == 273
    assert sum(a["iscrowd"] for a in data["annotations"]) == 38
    assert data["images"][0]["id"] == 2007000027
    voc_recs = read_voc(VOC_MINI, "val")
    coco_recs, cats = read_coco(data, VOC_MINI / "JPEGImages")
    assert cats.names == VOC_CLASSES
    for a, b in zip(voc_recs, coco_recs):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.difficult, b.difficult)
        assert not b.crowd.any() and a.path == b.path
    vs, cs = VOCDetection(VOC_MINI, "val"), COCODetection(data, VOC_MINI / "JPEGImages", resize=ResizeConfig())
    for i in (0, 5):
        (ia, ta, _), (ib, tb, _) = vs[i], cs[i]
        assert (ia == ib).all() and all((ta[k] == tb[k]).all() for k in ta)


def test_voc2coco_same_ap50_under_both_evaluators(tmp_path):
    ids = make_random_voc(tmp_path / "V", tmp_path / "res", 150, VOC_CLASSES, 20, seed=11, p_difficult=0.0)
    res_voc = evaluate_dir(tmp_path / "res", VOCGroundTruth.load(tmp_path / "V", "test"), "test", "area", "devkit")
    data = voc_to_coco(tmp_path / "V", "test")
    cid = {i["voc_id"]: i["id"] for i in data["images"]}
    results = []
    for c, name in enumerate(VOC_CLASSES):
        for line in (tmp_path / "res" / f"comp4_det_test_{name}.txt").read_text().splitlines():
            i, s, x1, y1, x2, y2 = line.split()
            x1, y1, x2, y2 = float(x1), float(y1), float(x2), float(y2)
            results.append({"image_id": cid[i], "category_id": c + 1, "score": float(s),
                            "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1]})
    from detkd.eval.coco import coco_stats

    ap50 = coco_stats(data, results)["AP50"]
    # identical matching (plain IoU on [x-1, w+1] boxes = VOC's +1 IoU); only COCO's 101-point sampling of
    # the same precision envelope differs from the all-point area, by well under one recall step.
    assert 0.1 < res_voc["mAP"] < 0.9
    assert abs(ap50 - res_voc["mAP"]) < 0.01, (ap50, res_voc["mAP"])


@need_coco
def test_coco_100_counts_and_category_map():
    recs, cats = read_coco(COCO_100, "/nonexistent")
    assert len(recs) == 100 and len(cats.cat_ids) == 80
    assert sum(len(r.labels) for r in recs) == 839
    assert sum(int(r.crowd.sum()) for r in recs) == 9
    assert cats.cat_ids[0] == 1 and cats.cat_ids[-1] == 90 and cats.label_of[90] == 80
    assert cats.names[0] == "person"
    r = next(r for r in recs if r.image_id == 74)
    raw = json.loads(COCO_100.read_text())
    a = next(a for a in raw["annotations"] if a["id"] == 1774)
    k = [i for i, lab in enumerate(r.labels) if cats.cat_ids[lab - 1] == a["category_id"]]
    x, y, w, h = a["bbox"]
    assert any(np.allclose(r.boxes[i], [x, y, x + w, y + h]) for i in k)


@need_coco
def test_coco_100_gt_as_detections_scores_one():
    from detkd.eval.base import build_evaluator

    recs, cats = read_coco(COCO_100)
    ev = build_evaluator("coco", ann_file=COCO_100)
    assert isinstance(ev, COCOEvaluator)
    outs = []
    for r in recs:
        keep = ~r.crowd
        outs.append({"boxes": r.boxes[keep], "scores": np.linspace(0.9, 0.5, int(keep.sum())),
                     "labels": r.labels[keep]})
    ev.process([{"image_id": r.image_id} for r in recs], outs)
    stats = ev.evaluate()
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)


def test_coco_reader_tiny_boxes_empty_images_and_unknown_refs(tmp_path):
    data = {"images": [{"id": 5, "file_name": "a.jpg", "width": 10, "height": 10},
                       {"id": 9, "file_name": "b.jpg", "width": 10, "height": 10}],
            "categories": [{"id": 3, "name": "x"}],
            "annotations": [{"id": 1, "image_id": 5, "category_id": 3, "bbox": [1, 1, 1, 5], "iscrowd": 0},
                            {"id": 2, "image_id": 5, "category_id": 3, "bbox": [1, 1, 4, 5], "iscrowd": 0}]}
    with pytest.warns(UserWarning, match="dropped 1 annotation"):
        recs, _ = read_coco(data)
    assert [len(r.labels) for r in recs] == [1, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert [r.image_id for r in read_coco(data, drop_empty=True)[0]] == [5]
    data["annotations"][1]["image_id"] = 6
    with pytest.raises(ValueError, match=r"annotations\[1\] \(id 2\) refers to unknown image id 6"):
        read_coco(data)
    data["annotations"][1].update(image_id=5, category_id=4)
    with pytest.raises(ValueError, match=r"annotations\[1\] \(id 2\) has unknown category id 4"):
        read_coco(data)


def _mini_voc(tmp_path, objects):
    root = tmp_path / "V"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    write_xml(root / "Annotations" / "a.xml", 20, 20, objects)
    (root / "JPEGImages" / "a.jpg").write_bytes(b"")
    (root / "ImageSets" / "Main" / "val.txt").write_text("a\nb\n")
    return root


def test_voc_reader_errors(tmp_path):
    root = _mini_voc(tmp_path, [("cat", (1, 1, 5, 5), False)])
    with pytest.raises(FileNotFoundError, match=r"val.txt:2: id 'b' is listed but .*b.xml is missing"):
        read_voc(root, "val")
    (root / "Annotations" / "b.xml").write_text((root / "Annotations" / "a.xml").read_text().replace("cat", "unicorn"))
    with pytest.raises(ValueError, match=r"b.xml: object 1: class 'unicorn' is not in the class list"):
        read_voc(root, "val", check_images=False)
    (root / "Annotations" / "b.xml").write_text(
        "<annotation><size><width>5</width><height>5</height></size><object><name>dog</name></object></annotation>")
    with pytest.raises(ValueError, match=r"b.xml: object 1 \(dog\): no <bndbox>"):
        parse_voc_xml(root / "Annotations" / "b.xml")
    shutil.copy(root / "Annotations" / "a.xml", root / "Annotations" / "b.xml")
    with pytest.raises(FileNotFoundError, match=r"val.txt:2: .*b.jpg is missing"):
        read_voc(root, "val")
    assert len(read_voc([root, root], ["val", "val"], check_images=False)) == 4  # concatenated roots


def test_records_to_coco_ids_fall_back_to_order():
    from detkd.data.detection import DetRecord

    recs = [DetRecord("img_a", Path("x"), 5, 5, np.zeros((0, 4)), [], [], []),
            DetRecord("img_b", Path("y"), 5, 5, np.zeros((0, 4)), [], [], [])]
    assert [i["id"] for i in records_to_coco(recs, VOC_CLASSES)["images"]] == [1, 2]
