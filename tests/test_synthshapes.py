"""SynthShapes: determinism, VOC and COCO copies give identical targets, the scene statistics it promises."""
import json

import numpy as np
import pytest

from detkd.data.coco import read_coco
from detkd.data.synthshapes import (DISTRACTORS, SYNTHSHAPES_CLASSES, SynthShapesConfig, ensure_synthshapes,
                                    rasterize, render_scene, shape_parts, write_synthshapes)
from detkd.data.voc import read_voc
from detkd.errors import UserError


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("ss")
    write_synthshapes(root, seed=3, n_train=40, n_val=12, workers=1)
    return root


def test_deterministic_from_seed():
    a = render_scene(np.random.default_rng([5, 0, 7]))
    b = render_scene(np.random.default_rng([5, 0, 7]))
    c = render_scene(np.random.default_rng([6, 0, 7]))
    assert (a[0] == b[0]).all() and json.dumps(a[1], default=list) == json.dumps(b[1], default=list)
    assert a[0].shape != c[0].shape or not (a[0] == c[0]).all()


def test_voc_and_coco_copies_give_identical_targets(small_set):
    for split in ("train", "val"):
        voc = read_voc(small_set, split, SYNTHSHAPES_CLASSES)
        coco, cats = read_coco(small_set / "annotations" / f"instances_{split}.json", small_set / "JPEGImages")
        assert cats.names == SYNTHSHAPES_CLASSES and cats.cat_ids == tuple(range(1, 13))
        assert [int(r.image_id) for r in voc] == [r.image_id for r in coco]
        for a, b in zip(voc, coco):
            assert a.path == b.path and (a.width, a.height) == (b.width, b.height)
            for k in ("boxes", "labels", "difficult", "crowd", "truncated"):
                np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
            for flag in (False, True):
                for x, y in zip(a.split(flag), b.split(flag)):
                    np.testing.assert_array_equal(x, y)


def test_scene_statistics(small_set):
    recs = read_voc(small_set, "train", SYNTHSHAPES_CLASSES)
    labels = np.concatenate([r.labels for r in recs])
    boxes = np.concatenate([r.boxes for r in recs])
    longer = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert len(set(labels.tolist())) >= 10
    assert longer.min() <= 10 and longer.max() >= 150  # from a few px to most of the image
    assert np.median(longer) < 40  # long tail of small objects
    assert 0.02 < np.concatenate([r.difficult for r in recs]).mean() < 0.4
    assert np.concatenate([r.truncated for r in recs]).any()
    sizes = {(r.width, r.height) for r in recs}
    assert len(sizes) > 5 and all(320 <= s <= 512 for wh in sizes for s in wh)
    for r in recs:  # boxes inside the image, non-empty
        assert (r.boxes[:, 2] > r.boxes[:, 0]).all() and (r.boxes[:, :2] >= 0).all()
        assert (r.boxes[:, 2] <= r.width).all() and (r.boxes[:, 3] <= r.height).all()


def test_paired_classes_differ_in_detail():
    rng = np.random.default_rng(0)
    area = {}
    for name in SYNTHSHAPES_CLASSES + DISTRACTORS:
        parts = [(p * 40 + 50, v) for p, v in shape_parts(name, rng)]
        cov, _, _ = rasterize(parts)
        area[name] = float(cov.sum())
    assert area["ring"] < 0.8 * area["circle"] and area["frame"] < 0.8 * area["square"]
    assert area["pacman"] < area["circle"] and abs(area["star5"] - area["star6"]) < 0.35 * area["star5"]


def test_no_objects_means_no_annotations():
    cfg = SynthShapesConfig(objects=(0, 0), p_crowd=0.0, distractors=(4, 4))
    image, objects = render_scene(np.random.default_rng(1), cfg)
    assert objects == [] and image.std() > 5


def test_ensure_reuses_or_refuses(small_set):
    assert ensure_synthshapes(small_set, seed=3, n_train=40, n_val=12) == small_set
    with pytest.raises(UserError, match=r"other parameters .*data.data_seed: 3 there, 4 asked\); set data.data_seed=3"):
        ensure_synthshapes(small_set, seed=4, n_train=40, n_val=12)
    info = json.loads((small_set / "synthshapes.json").read_text())
    assert info["counts"]["val"]["images"] == 12


def test_registered_dataset_with_knobs(tmp_path):
    from detkd.registry import lookup

    build = lookup("dataset", "synthshapes")
    with pytest.raises(ValueError, match="unknown knob"):
        build(root=str(tmp_path / "x"), knobs={"objcts": (1, 2)})
    ds = build(root=str(tmp_path / "s"), split="train", n_train=3, n_val=2, knobs={"objects": [3, 3], "p_crowd": 0.0})
    img, tgt, meta = ds[0]
    assert len(ds) == 3 and min(meta["size"]) == 320 and img.shape[0] == 3
    info = json.loads((tmp_path / "s" / "synthshapes.json").read_text())
    assert info["config"]["objects"] == [3, 3]


def test_engine_builder_kwargs_and_val_evaluation_view(tmp_path):
    """What the engine does: the builder with DetDataConfig's kwargs, the val split as an evaluation view
    (original-size uint8 images), the registered 'voc' evaluator on it, flat float metrics."""
    from detkd.eval.base import build_evaluator
    from detkd.registry import lookup

    build = lookup("dataset", "synthshapes")
    train = build(root=str(tmp_path / "s"), split="train", img_size=160, n_train=2, n_val=3)
    img, tgt, meta = train[0]
    assert min(meta["size"]) == 160 and tgt["labels"].min() >= 1
    val = build(root=str(tmp_path / "s"), split="val", n_train=2, n_val=3)
    image, meta = val[0]
    assert image.dtype == np.uint8 and image.shape[:2] == meta["orig_size"] == (val.records[0].height,
                                                                                val.records[0].width)
    ev = build_evaluator("voc", dataset=val, max_images=2)
    assert len(ev.gt.image_ids) == 2 and ev.gt.class_names == SYNTHSHAPES_CLASSES
    recs = {r.image_id: r for r in val.records}
    ev.reset()
    ev.process([{"image_id": i} for i in list(recs)[:2]],
               [{"boxes": recs[i].boxes, "scores": np.ones(len(recs[i].labels)), "labels": recs[i].labels}
                for i in list(recs)[:2]])
    flat = ev.evaluate()
    assert all(isinstance(v, float) for v in flat.values()) and flat["mAP"] > 0.5


def test_colour_and_size_carry_no_class_information(small_set):
    """Between-class variance of the mean box colour and of the log box size is at sampling-noise level
    (measured 0.012 / 0.011 of the within-class variance on 200 scenes; chance level is about 1/25 here)."""
    import cv2

    cols, labs, sizes = [], [], []
    for r in read_voc(small_set, "train", SYNTHSHAPES_CLASSES):
        im = cv2.imread(str(r.path))[:, :, ::-1].astype(np.float32)
        for b, lab, d in zip(r.boxes.astype(int), r.labels, r.difficult):
            if not d:
                cols.append(im[b[1]:b[3], b[0]:b[2]].reshape(-1, 3).mean(0))
                labs.append(lab)
                sizes.append([np.log(max(b[2] - b[0], b[3] - b[1]))])
    labs = np.array(labs)
    present = [c for c in range(1, 13) if (labs == c).sum() >= 5]
    assert len(present) >= 10
    for x in (np.array(cols), np.array(sizes)):
        means = np.array([x[labs == c].mean(0) for c in present])
        within = np.mean([x[labs == c].var(0).mean() for c in present])
        assert means.var(0).mean() / within < 0.15


def test_presets_and_unknown_names():
    from detkd.data.synthshapes import PRESETS, SynthShapesConfig, preset_config

    assert preset_config("full") == SynthShapesConfig()
    cpu = preset_config("cpu", {"objects": [1, 3]})
    assert cpu.side_range == PRESETS["cpu"]["side_range"] and cpu.objects == (1, 3) and cpu.size_min == 12.0
    with pytest.raises(ValueError, match="unknown preset 'tiny'; known: full, cpu, easy"):
        preset_config("tiny")
    with pytest.raises(ValueError, match=r"unknown knob\(s\) \['colour'\]"):
        preset_config("cpu", {"colour": 1})


def test_fill_and_background_knobs():
    """Flat fills only on a plain background: an opaque, unblurred, outline-free shape is one colour inside."""
    cfg = SynthShapesConfig(objects=(1, 1), distractors=(0, 0), p_crowd=0.0, p_outline=0.0, p_blur=0.0,
                            opacity=(1.0, 1.0), p_border=0.0, size_min=60.0, size_max_frac=0.3,
                            fill_weights=(1.0, 0.0, 0.0, 0.0, 0.0), p_plain_background=1.0)
    for seed in range(4):
        image, objects = render_scene(np.random.default_rng(seed), cfg)
        x0, y0, x1, y1 = objects[0]["box"].astype(int)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2  # every class but ring / frame / crescent covers its centre
        if SYNTHSHAPES_CLASSES[objects[0]["label"] - 1] not in ("ring", "frame", "crescent", "pacman"):
            patch = image[cy - 2 : cy + 3, cx - 2 : cx + 3].reshape(-1, 3)
            assert (patch.max(0) - patch.min(0)).max() <= 1
    # the knobs at their defaults draw nothing extra: the default scene is the one of an explicit default config
    a = render_scene(np.random.default_rng(9))
    b = render_scene(np.random.default_rng(9), SynthShapesConfig(fill_weights=(0.35, 0.2, 0.15, 0.18, 0.12)))
    assert (a[0] == b[0]).all()


def test_stamp_written_before_a_knob_existed_is_reused(small_set, tmp_path):
    import shutil

    root = tmp_path / "old"
    shutil.copytree(small_set, root)
    info = json.loads((root / "synthshapes.json").read_text())
    for k in ("fill_weights", "p_plain_background"):
        del info["config"][k]
    (root / "synthshapes.json").write_text(json.dumps(info))
    assert ensure_synthshapes(root, seed=3, n_train=40, n_val=12) == root
