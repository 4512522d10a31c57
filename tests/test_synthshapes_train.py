"""Generic detectors on SynthShapes end to end: training start checks, empty images, collapsed boxes, VOC07 +
COCO evaluation of one inference pass, `detkd eval detector` on a VOC root and a COCO JSON, and (slow) `detkd
train <family>/<cfg>_synthshapes` -> export -> detect png|voc|coco -> eval detector for every family."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detkd.cli import app
from detkd.data.detection import DetectionDataset, DetRecord, ResizeConfig
from detkd.data.synthshapes import SYNTHSHAPES_CLASSES, write_synthshapes
from detkd.models.weights import save_model_file
from detkd.registry import MODELS, TINY_CONFIGS, load_all
from tests._benchmarks import load_benchmark

runner = CliRunner()
FAMILIES = ("faster_rcnn_vgg", "faster_rcnn_fpn", "retinanet", "gfl")
# config, then overrides that make the model tiny (same architecture, fewer channels)
CONFIGS = {
    "faster_rcnn_vgg": ("faster_rcnn/vgg_lite_synthshapes", ["model.width=0.125", "model.hidden=32",
                                                       "train.backbone_init="]),  # no trunk of that width
    "faster_rcnn_fpn": ("faster_rcnn/fpn_lite_synthshapes", ["model.fpn_channels=16", "model.hidden=32"]),
    "retinanet": ("retinanet/r18_lite_synthshapes", ["model.fpn_channels=16", "model.num_convs=1"]),
    "gfl": ("gfl/r18_lite_synthshapes", ["model.fpn_channels=16", "model.stacked_convs=1", "model.gn_groups=8"]),
}


def cli(*args, code=0):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == code, f"detkd {' '.join(map(str, args))}: {res.output}\n{res.exception!r}"
    return res


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes") / "ss"
    write_synthshapes(root, seed=0, n_train=4, n_val=3, workers=1)
    return root


def data_args(root):
    return [f"data.root={root}", "data.preset=full", "data.n_train=4", "data.n_val=3", "data.img_size=128",
            "data.max_long=160"]  # the fixture is written with the full preset


def test_voc_and_coco_from_one_pass(shapes):
    """eval.also=[coco]: the VOC evaluator and the COCO one score the same detections (GT -> both ~1)."""
    from detkd.config import DetEvalConfig
    from detkd.experiment import build_evaluators
    from detkd.registry import lookup

    val = lookup("dataset", "synthshapes")(root=str(shapes), split="val", n_train=4, n_val=3)
    ev = build_evaluators(DetEvalConfig(evaluator="voc", also=["coco"]), val)
    ev.reset()
    recs = val.records
    ev.process([{"image_id": r.image_id} for r in recs],
               [{"boxes": r.boxes, "scores": np.linspace(1, 0.5, len(r.labels)), "labels": r.labels} for r in recs])
    m = ev.evaluate()
    assert m["mAP"] > 0.99 and m["coco/AP"] > 0.95 and "coco/AP50" in m and "AP" not in m
    only = build_evaluators(DetEvalConfig(evaluator="voc"), val)
    assert not hasattr(only, "members")


def test_class_count_mismatch_fails_at_start(shapes, tmp_path):
    config, tiny = CONFIGS["retinanet"]
    res = cli("train", config, *tiny, *data_args(shapes), "model.num_classes=5", f"train.out_dir={tmp_path}", code=2)
    msg = res.output.strip()
    assert "has 12 classes but model.num_classes=5" in msg and "set model.num_classes=12" in msg
    assert not (tmp_path / "retinanet_r18_lite_synthshapes" / "last.pt").exists()


def test_checkpoint_of_another_architecture_fails_at_start(shapes, tmp_path):
    load_all()
    other = MODELS["gfl"](**{**TINY_CONFIGS["gfl"], "num_classes": 12})
    save_model_file(other, tmp_path / "gfl.safetensors")
    config, tiny = CONFIGS["retinanet"]
    res = cli("train", config, *tiny, *data_args(shapes), f"train.init_weights={tmp_path / 'gfl.safetensors'}",
              f"train.out_dir={tmp_path}", code=2)
    lines = [line for line in res.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "does not fit RetinaNet" in lines[0] and "missing keys" in lines[0]


def test_boxes_collapsing_after_resize_are_dropped(tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((1000, 1000, 3), np.uint8))
    rec = DetRecord("a", tmp_path / "a.jpg", 1000, 1000, boxes=[[10, 10, 500, 15], [100, 100, 300, 400]],
                    labels=[1, 2], difficult=[False, False], crowd=[False, False])
    _, target, meta = DetectionDataset([rec], ResizeConfig((100,), 100))[0]
    assert meta["size"] == (100, 100)
    assert target["labels"].tolist() == [2] and target["boxes"].shape == (1, 4)  # the 0.5-px-high box is gone


@pytest.mark.parametrize("family", FAMILIES)
def test_images_without_objects_train_without_nan(family):
    """A batch where no image has an object: finite losses and gradients (the normalisers do not divide by 0)."""
    load_all()
    torch.manual_seed(0)
    model = MODELS[family](**TINY_CONFIGS[family]).train()
    x = torch.rand(2, 3, 96, 128) * 255
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)} for _ in range(2)]
    losses = model(x, empty, image_sizes=[(96, 128), (90, 100)]).losses
    assert losses and all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_eval_detector_on_voc_root_and_coco_json(shapes, tmp_path):
    load_all()
    torch.manual_seed(0)
    model = MODELS["retinanet"](**{**TINY_CONFIGS["retinanet"], "num_classes": 12})
    save_model_file(model, tmp_path / "r.safetensors")
    w = tmp_path / "r.safetensors"
    voc = json.loads(cli("eval", "detector", "--weights", w, "--voc-root", shapes, "--split", "val", "--classes",
                         "synthshapes", "--protocol", "torchvision-320", "--json").output.strip().splitlines()[-1])
    assert 0 <= voc["voc07_map"] <= 1 and 0 <= voc["coco_ap"] <= 1 and voc["n_images"] == 3
    assert list(voc["per_class"]) == list(SYNTHSHAPES_CLASSES)
    coco = json.loads(cli("eval", "detector", "--weights", w, "--coco-ann", shapes / "annotations" /
                          "instances_val.json", "--coco-images", shapes / "JPEGImages", "--protocol",
                          "torchvision-320", "--json").output.strip().splitlines()[-1])
    assert coco["coco_ap"] == pytest.approx(voc["coco_ap"], abs=1e-9)  # same images, same detections
    res = cli("eval", "detector", "--weights", w, "--voc-root", shapes, "--split", "val", code=2)
    assert "no class_names" in res.output and "--classes" in res.output
    res = cli("eval", "detector", "--weights", w, "--voc-root", shapes, "--split", "val", "--classes", "voc", code=2)
    assert "the model has 12 classes but the data has 20" in res.output


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_train_export_detect_eval_end_to_end(family, shapes, tmp_path):
    """`detkd train` a tiny variant of each family's SynthShapes config (1 epoch), with VOC07 mAP and COCO AP in
    summary.json; export (the card names the classes); detect png|voc|coco; eval detector gives the same mAP."""
    config, tiny = CONFIGS[family]
    cli("train", config, *tiny, *data_args(shapes), "train.epochs=1", "train.batch_size=2",
        "sched.warmup_iters=1", f"train.out_dir={tmp_path}", "name=run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert {"mAP", "coco/AP", "coco/AP50"} <= set(summary["eval"]) and summary["nonfinite_skipped"] == 0
    cli("export", tmp_path / "run", "--out", tmp_path / "m.safetensors")
    card = json.loads((tmp_path / "m.json").read_text())
    assert card["class_names"] == list(SYNTHSHAPES_CLASSES)
    images = sorted((shapes / "JPEGImages").glob("2*.jpg"))[:2]
    for fmt in ("png", "voc", "coco"):
        cli("detect", *images, "--weights", tmp_path / "m.safetensors", "--protocol", "torchvision-320",
            "--format", fmt, "--out-dir", tmp_path / fmt)
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == [f"{p.stem}.png" for p in images]
    assert {p.stem for p in (tmp_path / "voc").iterdir()} <= set(SYNTHSHAPES_CLASSES)
    rows = json.loads((tmp_path / "coco" / "detections.json").read_text())
    assert all(1 <= r["category_id"] <= 12 for r in rows)
    res = json.loads(cli("eval", "detector", "--weights", tmp_path / "m.safetensors", "--voc-root", shapes,
                         "--split", "val", "--protocol", "torchvision-320", "--json").output.strip().splitlines()[-1])
    assert res["voc07_map"] == pytest.approx(summary["eval"]["mAP"], abs=1e-6)
    assert res["coco_ap"] == pytest.approx(summary["eval"]["coco/AP"], abs=1e-6)


def load_capacity_benchmark():
    return load_benchmark("synthshapes_capacity")


def test_capacity_benchmark_pairs_and_table():
    """Each family's teacher and student share data, optimiser, schedule, epochs and test; the table states the
    gap and the bar; a committed result file has exactly the promised row keys (fractions)."""
    from dataclasses import replace

    from detkd.config import load_config

    bench = load_capacity_benchmark()
    assert set(bench.FAMILIES) == set(FAMILIES)
    for student, teacher in bench.FAMILIES.values():
        s, t = load_config(student), load_config(teacher)
        assert (s.data, s.optim, s.sched, s.eval) == (t.data, t.optim, t.sched, t.eval)
        # the same training recipe; each starts from the SynthShapes-pretrained trunk of its own width
        assert replace(s.train, backbone_init="") == replace(t.train, backbone_init="")
        if s.train.backbone_init:
            assert t.train.backbone_init and s.train.backbone_init != t.train.backbone_init
        assert s.eval.also == ["coco"] and s.eval.protocol == f"torchvision-{s.data.img_size}" and s.model != t.model
    rows = [{"family": "gfl", "role": r, "model": m, "epochs": 2, "voc07_map": v, "coco_ap": v / 2,
             "params": p, "train_s": 10.0, "_gflops": 1.0, "_latency_ms": 5.0}
            for r, m, v, p in (("student", "gfl", 0.40, 10**6), ("teacher", "gfl", 0.47, 3 * 10**6))]
    lines = bench.table(rows, {"commit": "abcdef0", "img_size": 160})
    assert "| gfl | student | gfl | 2 | 40.0 | 20.0 | 1.00 | 1.00 | 5 | 10 |" in lines
    assert "| gfl | +7.0 | yes | yes |" in lines
    committed = bench.RESULTS / "synthshapes_capacity.json"
    if committed.is_file():
        data = json.loads(committed.read_text())
        assert list(data) == ["rows"] and data["rows"]
        for row in data["rows"]:
            assert tuple(row) == bench.ROW_KEYS and 0 <= row["voc07_map"] <= 1 and 0 <= row["coco_ap"] <= 1
