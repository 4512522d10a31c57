"""The demo's parts beside the face one: shipped-asset handling of the SynthShapes part, model configs read from
the cards, the face-recognition part, and the static page (every image it references exists)."""
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from detkd.config import load_config
from detkd.demo.common import PartResult, card_overrides
from detkd.demo.report import write_index
from detkd.demo.shapes import PAIRS, ShapesSchedule, asset, run_shapes
from detkd.errors import UserError

# per family: overrides of the student config that make the model tiny (same architecture, fewer channels)
TINY = {
    "faster_rcnn_fpn": ["model.fpn_channels=16", "model.hidden=32"],
    "retinanet": ["model.fpn_channels=16", "model.num_convs=1"],
    "gfl": ["model.fpn_channels=16", "model.stacked_convs=1", "model.gn_groups=8"],
}
TINY_DATA = ["data.img_size=128", "data.max_long=160", "train.batch_size=2"]


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.headings, self._in_h2 = [], [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        elif tag == "a":
            self.links.append(a["href"])
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)
            self._in_h2 = False


def parse(index: Path) -> Page:
    page = Page()
    page.feed(index.read_text())
    return page


def make_tiny_assets(assets: Path) -> None:
    """Randomly initialised tiny teacher and baseline of every pair, saved as shipped assets with cards."""
    import torch

    from detkd.models.weights import save_model_file
    from detkd.registry import build_model

    torch.manual_seed(0)
    for pair in PAIRS:
        tiny = TINY[pair.family]
        student = load_config(pair.student, tiny).model
        teacher = load_config(pair.distill, [f"distill.teacher.{o.split('.', 1)[1]}" for o in tiny]).distill.teacher
        save_model_file(build_model(student), asset("baseline", pair.family, assets), task="detection")
        save_model_file(build_model(teacher), asset("teacher", pair.family, assets), task="detection")


def test_card_overrides_rebuild_the_card_model():
    cfg = load_config("retinanet/r18_lite_synthshapes")
    card = {**json.loads(json.dumps(cfg.model.__dict__)), "fpn_channels": 16, "anchor_base": [8, 16, 32, 64, 128]}
    ovr = card_overrides(card, cfg.model, "model")
    assert sorted(ovr) == ["model.anchor_base=[8,16,32,64,128]", "model.fpn_channels=16"]
    rebuilt = load_config("retinanet/r18_lite_synthshapes", ovr).model
    assert rebuilt.fpn_channels == 16 and list(rebuilt.anchor_base) == [8, 16, 32, 64, 128]
    with pytest.raises(ValueError, match="'gfl' model, the config a 'retinanet'"):
        card_overrides({"name": "gfl"}, cfg.model, "model")
    with pytest.raises(ValueError, match="'bogus' is not a field"):
        card_overrides({**card, "bogus": 1}, cfg.model, "model")


def test_pooled_pr_curve(tmp_path):
    """GT boxes as detections: recall reaches 1 at precision 1; labels moved to another class: recall 0."""
    import numpy as np

    from detkd.data.synthshapes import write_synthshapes
    from detkd.demo.shapes import pooled_pr
    from detkd.eval.base import build_evaluator
    from detkd.registry import lookup

    write_synthshapes(tmp_path / "ss", seed=0, n_train=2, n_val=3, workers=1)
    val = lookup("dataset", "synthshapes")(root=str(tmp_path / "ss"), split="val", n_train=2, n_val=3)
    for shift, recall in ((0, 1.0), (1, 0.0)):
        ev = build_evaluator("voc", dataset=val)
        ev.reset()
        ev.process([{"image_id": r.image_id} for r in val.records],
                   [{"boxes": r.boxes, "scores": np.linspace(1, 0.5, len(r.labels)),
                     "labels": (np.asarray(r.labels) - 1 + shift) % 12 + 1} for r in val.records])
        rec, prec = pooled_pr(ev)
        assert len(rec) == sum(len(r.labels) for r in val.records)
        assert rec[-1] == pytest.approx(recall) and prec[-1] == pytest.approx(recall)


def test_shapes_skips_pairs_without_assets(tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    (asset("teacher", "gfl", assets)).write_bytes(b"")  # a teacher alone (and no card): still skipped
    res = run_shapes(tmp_path / "shapes", quick=True, assets=assets)
    assert res == {}
    part = json.loads((tmp_path / "shapes" / "part.json").read_text())
    assert len(part["notes"]) == len(PAIRS) and part["rows"] == []
    ld = next(n for n in part["notes"] if n.startswith("ld/gfl"))
    assert "synthshapes_teacher_gfl.safetensors" in ld and "synthshapes_baseline_gfl.safetensors" in ld
    page = parse(write_index(tmp_path))
    assert page.images == [] and page.links == ["#shapes"]


def test_index_lists_parts_and_refuses_nothing_missing(tmp_path):
    """Parts are ordered faces, shapes, facerec whatever the directory names; image paths are relative."""
    for key, d in (("facerec", "a"), ("faces", "b")):
        (tmp_path / d / "fig").mkdir(parents=True)
        (tmp_path / d / "fig" / "x.png").write_bytes(b"png")
        PartResult(key=key, title=key.upper(), intro="i <&>", header=["model", "AP"], rows=[["m", "1.0"]],
                   commands=["detkd train x 'a=b'"], figures=["fig/x.png"],
                   gallery={"img0": ["fig/x.png"]}, gallery_models=["teacher"]).save(tmp_path / d)
    page = parse(write_index(tmp_path))
    assert page.headings == ["FACES", "FACEREC"] and page.links == ["#faces", "#facerec"]
    assert page.images == ["b/fig/x.png", "b/fig/x.png", "a/fig/x.png", "a/fig/x.png"]
    assert "i &lt;&amp;&gt;" in (tmp_path / "index.html").read_text()


def test_unknown_part_is_a_user_error(tmp_path):
    from detkd.demo import run_parts

    with pytest.raises(UserError, match="unknown demo part.*'face'.*faces, shapes, facerec"):
        run_parts(["face"], tmp_path / "demo")
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_all_parts_quick_and_the_page(tmp_path):
    """Every part at tiny settings (tiny SynthShapes assets built here), then the page: one section per part,
    each row with its command, and every image it references exists."""
    from detkd.demo import run_demo
    from detkd.demo.facerec import STUDENTS, run_facerec

    demo = tmp_path / "demo"
    assets = tmp_path / "assets"
    make_tiny_assets(assets)
    shapes = run_shapes(demo / "shapes", seed=0, assets=assets,
                        schedule=ShapesSchedule(finetune_images=4, val_images=3, gallery_images=1, max_iters=2,
                                                overrides=TINY_DATA))
    assert set(shapes) == {f"{p.method}/{p.family}" for p in PAIRS}
    for pair in PAIRS:
        scores = shapes[f"{pair.method}/{pair.family}"]
        assert set(scores) == {"teacher", "baseline", "control", pair.method}
        assert all(0 <= s["voc07_map"] <= 1 and 0 <= s["coco_ap"] <= 1 for s in scores.values())
        cfg = json.loads((demo / "shapes" / f"{pair.method}_{pair.family}" / pair.method / "config.json").read_text())
        assert cfg["model"]["fpn_channels"] == 16
    face = run_facerec(demo / "facerec", quick=True)
    assert list(face) == ["teacher", *STUDENTS] and all(0 <= r["acc"] <= 1 for r in face.values())
    run_demo(demo / "faces", quick=True)
    page = parse(write_index(demo))
    assert page.headings[0].startswith("Face detection") and len(page.headings) == 3
    assert page.images and all((demo / src).is_file() for src in page.images)
    for d in ("faces", "shapes", "facerec"):
        part = json.loads((demo / d / "part.json").read_text())
        assert len(part["commands"]) == len(part["rows"])
        assert all(c.startswith(("detkd train ", "# shipped ")) for c in part["commands"]), part["commands"]
    shapes_part = json.loads((demo / "shapes" / "part.json").read_text())
    assert len(shapes_part["gallery"]) == len(PAIRS) and all(len(v) == 3 for v in shapes_part["gallery"].values())


def test_top_detections_keeps_the_best_n_in_step():
    from detkd.demo.common import top_detections

    dets = {"boxes": np.arange(12.0).reshape(3, 4), "scores": np.array([0.1, 0.3, 0.2]), "labels": np.array([1, 2, 3]),
            "image_size": (10, 10)}
    top = top_detections(dets, 2)
    assert top["scores"].tolist() == [0.3, 0.2] and top["labels"].tolist() == [2, 3]
    assert top["boxes"].tolist() == [[4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0]] and top["image_size"] == (10, 10)
    assert len(top_detections(dets, 5)["scores"]) == 3 and len(top_detections(dets, 0)["scores"]) == 0
