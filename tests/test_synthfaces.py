"""SynthFaces: written in WIDER layout, read back by the WIDER readers, nested subsets, deterministic."""
import hashlib

import numpy as np
import pytest

from detkd.data import synthfaces as S
from detkd.errors import UserError
from detkd.data.widerface import WiderFaceTrain, WiderFaceVal, read_label_txt
from detkd.data.widerface import load_gt
from detkd.registry import lookup

SMALL = dict(n_train=12, n_val=12, image_size=160)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return S.write_synthfaces(tmp_path_factory.mktemp("sf") / "synthfaces", seed=3, **SMALL)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".jpg", ".txt"):
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_lfw_pools_are_faces_then_nonfaces_and_val_faces_are_disjoint():
    lfw = S._lfw()
    assert lfw.shape == (200, 25, 25)
    assert set(S.TRAIN_FACES).isdisjoint(S.VAL_FACES) and set(S.TRAIN_NONFACES).isdisjoint(S.VAL_NONFACES)
    assert max(S.VAL_FACES) < 100 <= min(S.TRAIN_NONFACES)
    # held-out faces correlate with the mean train face, non-faces do not
    t = lfw[:80].mean(0)
    t = (t - t.mean()) / t.std()

    def corr(c):
        return float((((c - c.mean()) / (c.std() + 1e-6)) * t).mean())

    assert np.mean([corr(c) for c in lfw[80:100]]) > 0.4 > 0.1 > np.mean([corr(c) for c in lfw[100:]])
    # the canonical eye landmarks fall on dark eye regions of the mean face (darker than the cheeks below)
    m = lfw[:100].mean(0)
    for x, y in S.FACE_LANDMARKS[:2]:
        assert m[int(y), int(x)] < m[int(y) + 3, int(x)] - 0.1
    assert len(S._photos()) == len(S.BACKGROUND_PHOTOS)


def test_written_layout_reads_back_as_wider(synth_root):
    recs = read_label_txt(synth_root / "train" / "label.txt")
    assert len(recs) == SMALL["n_train"] and all(r.path.is_file() for r in recs)
    assert {r.rel.split("/")[0] for r in recs} == {S.event_dir(k) for k in range(len(S.EVENTS))}
    n_faces = sum(len(r.boxes) for r in recs)
    assert n_faces >= 3 * SMALL["n_train"]
    for r in recs:  # boxes inside the image, valid landmarks inside their (slightly grown) boxes
        assert (r.boxes >= 0).all() and (r.boxes <= SMALL["image_size"]).all()
        lm, b = r.landmarks[r.landmarks_valid], r.boxes[r.landmarks_valid]
        assert ((lm >= b[:, None, :2] - 1) & (lm <= b[:, None, 2:] + 1)).all()
    assert 0 < np.mean(np.concatenate([r.landmarks_valid for r in recs])) < 1
    ds = WiderFaceTrain(synth_root, img_size=96, seed=0)
    img, tgt, _ = ds[0]
    assert img.shape == (3, 96, 96) and len(tgt["boxes"]) >= 1


def test_val_gt_is_nested_and_read_by_the_evaluator_loader(synth_root):
    gt = load_gt(synth_root / "val" / "gt")
    assert len(gt.images) == SMALL["n_val"] and gt.events == sorted(gt.events)
    counts = [gt.count_faces(s) for s in ("easy", "medium", "hard")]
    assert 0 < counts[0] < counts[1] < counts[2] <= sum(len(b) for b in gt.boxes)
    for i in range(len(gt.images)):
        e, m, h = (set(gt.keep[s][i].tolist()) for s in ("easy", "medium", "hard"))
        assert e <= m <= h and all(0 <= k < len(gt.boxes[i]) for k in h)
    val = WiderFaceVal(synth_root)
    image, meta = val[0]
    assert image.shape == (SMALL["image_size"], SMALL["image_size"], 3) and meta["event"] == gt.images[0][0]


def test_deterministic_from_the_seed(synth_root, tmp_path):
    again = S.write_synthfaces(tmp_path / "again", seed=3, **SMALL)
    assert _digest(again) == _digest(synth_root)
    rng_a, rng_b = np.random.default_rng([4, 0, 0]), np.random.default_rng([5, 0, 0])
    a, _ = S.render_scene(rng_a, S.EVENTS[0], 96, S.TRAIN_FACES, S.TRAIN_NONFACES)
    b, _ = S.render_scene(rng_b, S.EVENTS[0], 96, S.TRAIN_FACES, S.TRAIN_NONFACES)
    assert not np.array_equal(a, b)


def test_registered_builder_writes_once_and_refuses_other_parameters(tmp_path):
    build = lookup("dataset", "synthfaces")
    root = tmp_path / "sf"
    ds = build(root=str(root), img_size=64, augment=False, seed=0, split="train", n_train=6, n_val=6,
               image_size=128)
    assert isinstance(ds, WiderFaceTrain) and len(ds) == 6
    stamp = (root / "synthfaces.json").stat().st_mtime_ns
    val = build(root=str(root), img_size=64, augment=False, seed=0, split="val", n_train=6, n_val=6,
                image_size=128)
    assert isinstance(val, WiderFaceVal) and len(val) == 6
    assert (root / "synthfaces.json").stat().st_mtime_ns == stamp  # not rewritten
    with pytest.raises(UserError, match=r"data.n_train: 6 there, 7 asked\); set data.n_train=6 to train on it"):
        build(root=str(root), img_size=64, split="train", n_train=7, n_val=6, image_size=128)
    # a field no config key sets: no hint, only another root
    with pytest.raises(UserError, match=r"image_size: 128 there, 320 asked\); choose another data.root"):
        build(root=str(root), img_size=64, split="train", n_train=6, n_val=6)


def test_data_made_with_a_seed_trains_with_data_seed(tmp_path):
    """`detkd data synthfaces DIR --seed 5` data: the SynthFaces configs train on it with data.data_seed=5."""
    from detkd.config import load_config
    from detkd.experiment import build_train_set, build_val_set

    root = S.write_synthfaces(tmp_path / "sf5", seed=5, n_train=4, n_val=2)
    keys = [f"data.root={root}", "data.n_train=4", "data.n_val=2"]
    cfg = load_config("tdkd/retinaface_mnet075_to_mnet025_synthfaces", [*keys, "data.data_seed=5"])
    assert len(build_train_set(cfg)) == 4 and len(build_val_set(cfg)) == 2
    with pytest.raises(UserError, match="data.data_seed: 5 there, 0 asked"):
        build_train_set(load_config("retinaface/mnet025_synthfaces", keys))
    # the same data read as plain WIDER layout: data_seed is not a WIDER setting, refused when set
    wider = [f"data.root={root}", "data.name=widerface"]
    assert len(build_train_set(load_config("retinaface/mnet025_synthfaces", wider))) == 4
    with pytest.raises(UserError, match="data.data_seed=5: the 'widerface' data set"):
        build_train_set(load_config("retinaface/mnet025_synthfaces", [*wider, "data.data_seed=5"]))
