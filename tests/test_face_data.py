"""Identity folders, insightface verification .bin files and SynthIDs."""
import json
import pickle
import struct

import cv2
import numpy as np
import pytest
import torch

from detkd.data.facerec import FaceFolder, VerificationPairs, read_bin, write_bin
from detkd.data.synthids import augment_face, lfw_faces, split_identities, write_synthids
from detkd.registry import lookup


def _rgb(seed, size=16):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _make_folder(root, ids=("bob", "alice", "carl"), per_id=2, size=16):
    for i, name in enumerate(ids):
        (root / name).mkdir(parents=True)
        for k in range(per_id):
            cv2.imwrite(str(root / name / f"{k}.png"), _rgb(10 * i + k, size)[:, :, ::-1])


# ------------------------------------------------------------------------------------------ identity folders


def test_face_folder_labels_sorted_and_samples(tmp_path):
    _make_folder(tmp_path)
    ds = FaceFolder(tmp_path, img_size=16)
    assert ds.identities == ["alice", "bob", "carl"] and ds.num_classes == 3
    assert len(ds) == 6 and ds.keys[0] == "alice/0.png"
    img, label = ds[2]  # bob/0.png
    assert label == 1 and img.dtype == torch.float32 and img.shape == (3, 16, 16)
    assert torch.equal(img, torch.from_numpy(_rgb(0).transpose(2, 0, 1).copy()).float())  # RGB 0..255
    assert [lab for _, lab in ds.samples] == [0, 0, 1, 1, 2, 2]


def test_face_folder_resizes_and_teacher(tmp_path):
    _make_folder(tmp_path, size=20)
    teacher = {k: np.full(4, i, np.float32) for i, k in enumerate(sorted(FaceFolder(tmp_path, 16).keys))}
    ds = FaceFolder(tmp_path, img_size=16, with_teacher=teacher)
    img, label, t = ds[3]
    assert img.shape == (3, 16, 16) and t.tolist() == [3.0] * 4
    with pytest.raises(ValueError, match="N=6"):
        FaceFolder(tmp_path, 16, with_teacher=np.zeros((5, 4)))


def test_face_folder_corrupt_image_names_file(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "bob" / "1.png").write_bytes(b"not a png")
    ds = FaceFolder(tmp_path, img_size=16)
    with pytest.raises(ValueError, match=r"bob/1\.png"):
        ds[3]


def test_face_folder_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FaceFolder(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------ .bin


def test_bin_round_trip_png_lossless(tmp_path):
    images = np.stack([_rgb(i, 24) for i in range(6)])
    issame = [True, False, True]
    write_bin(tmp_path / "x.bin", images, issame, fmt=".png")
    got, same = read_bin(tmp_path / "x.bin", image_size=24)
    assert got.dtype == np.uint8 and np.array_equal(got, images)
    assert same.dtype == bool and same.tolist() == issame
    ds = VerificationPairs(tmp_path / "x.bin", image_size=24)
    assert len(ds) == 6 and torch.equal(ds[1], torch.from_numpy(images[1].transpose(2, 0, 1).copy()).float())


def _jpeg_bytes(img_rgb):
    ok, buf = cv2.imencode(".jpg", img_rgb[:, :, ::-1])
    assert ok
    return buf.tobytes()


def test_bin_written_like_insightface_jpeg_and_resize(tmp_path):
    imgs = [np.full((120, 120, 3), (200, 30, 10), np.uint8) for _ in range(4)]
    bins = [_jpeg_bytes(i) for i in imgs]
    with open(tmp_path / "lfw.bin", "wb") as f:
        pickle.dump((bins, [True, False]), f, protocol=2)
    got, same = read_bin(tmp_path / "lfw.bin", image_size=112)
    assert got.shape == (4, 112, 112, 3) and same.tolist() == [True, False]
    assert np.abs(got[0, 50, 50].astype(int) - [200, 30, 10]).max() <= 3  # RGB order kept


def _py2_pickle(bins, issame):
    """A Python 2 ``cPickle.dump(..., protocol=2)``: byte strings stored as py2 ``str`` (BINSTRING)."""
    out = b"\x80\x02]("
    for b in bins:
        out += b"T" + struct.pack("<I", len(b)) + b
    out += b"e]("
    out += b"".join(b"\x88" if s else b"\x89" for s in issame)
    return out + b"e\x86."


def test_bin_python2_pickle_needs_bytes_encoding(tmp_path):
    images = [_rgb(i, 16) for i in range(4)]
    ok_bins = [cv2.imencode(".png", im[:, :, ::-1])[1].tobytes() for im in images]
    path = tmp_path / "py2.bin"
    path.write_bytes(_py2_pickle(ok_bins, [False, True]))
    with pytest.raises(UnicodeDecodeError):  # plain load fails: the fallback path is what reads it
        pickle.loads(path.read_bytes())
    got, same = read_bin(path, image_size=16)
    assert np.array_equal(got, np.stack(images)) and same.tolist() == [False, True]


def test_bin_corrupt_image_names_index(tmp_path):
    bins = [_jpeg_bytes(_rgb(i, 16)) for i in range(4)]
    bins[2] = b"\xff\xd8garbage"
    with open(tmp_path / "bad.bin", "wb") as f:
        pickle.dump((bins, [True, True]), f, protocol=2)
    with pytest.raises(ValueError, match="image 2"):
        read_bin(tmp_path / "bad.bin", 16)


def test_bin_odd_count_and_mismatch(tmp_path):
    bins = [_jpeg_bytes(_rgb(i, 16)) for i in range(3)]
    with open(tmp_path / "odd.bin", "wb") as f:
        pickle.dump((bins, [True]), f, protocol=2)
    with pytest.raises(ValueError, match="odd number"):
        read_bin(tmp_path / "odd.bin", 16)
    with open(tmp_path / "mm.bin", "wb") as f:
        pickle.dump((bins[:2], [True, False]), f, protocol=2)
    with pytest.raises(ValueError, match="2 images but 2 issame"):
        read_bin(tmp_path / "mm.bin", 16)
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.bin"):
        read_bin(tmp_path / "junk.bin", 16)
    with pytest.raises(FileNotFoundError, match="none.bin"):
        read_bin(tmp_path / "none.bin", 16)


# ------------------------------------------------------------------------------------------ SynthIDs


def test_lfw_subset_first_100_are_faces():
    faces = lfw_faces()
    assert faces.shape == (100, 25, 25) and 0.0 <= faces.min() and faces.max() <= 1.0


def test_augment_deterministic_and_varied():
    face = lfw_faces()[0]
    a = augment_face(face, 32, np.random.default_rng(1))
    b = augment_face(face, 32, np.random.default_rng(1))
    c = augment_face(face, 32, np.random.default_rng(2))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_write_synthids_layout_disjoint_and_deterministic(tmp_path):
    kw = dict(seed=3, n_train_ids=5, imgs_per_id=3, n_val_ids=4, n_pairs=40, img_size=32)
    out = write_synthids(tmp_path / "a", **kw)
    ds = FaceFolder(out / "train", img_size=32)
    assert ds.num_classes == 5 and len(ds) == 15
    images, issame = read_bin(out / "val.bin", 32)
    assert images.shape == (80, 32, 32, 3) and issame.sum() == 20
    assert issame.reshape(10, 4).tolist() == [[True, True, False, False]] * 10  # LFW fold order
    meta = json.loads((out / "meta.json").read_text())
    assert not set(meta["train_crops"]) & set(meta["val_crops"])
    assert {f"id_{c:03d}" for c in meta["train_crops"]} == set(ds.identities)
    train, val = split_identities(3, 5, 4)
    assert sorted(train.tolist()) == sorted(meta["train_crops"])
    again = write_synthids(tmp_path / "b", **kw)
    assert (again / "val.bin").read_bytes() == (out / "val.bin").read_bytes()
    assert (again / "train" / ds.keys[4]).read_bytes() == (out / "train" / ds.keys[4]).read_bytes()
    mtime = (out / "val.bin").stat().st_mtime_ns
    write_synthids(out, **kw)  # matching meta.json: kept
    assert (out / "val.bin").stat().st_mtime_ns == mtime


def test_synthids_bad_args_and_foreign_folder(tmp_path):
    with pytest.raises(ValueError, match="exceeds"):
        write_synthids(tmp_path / "x", n_train_ids=80, n_val_ids=30)
    with pytest.raises(ValueError, match="multiple of 20"):
        write_synthids(tmp_path / "x", n_pairs=30)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not a SynthIDs"):
        write_synthids(tmp_path / "mine", n_train_ids=2, imgs_per_id=1, n_val_ids=2, n_pairs=20, img_size=16)


def test_registered_datasets(tmp_path):
    kw = dict(root=str(tmp_path / "s"), seed=0, n_train_ids=3, imgs_per_id=2, n_val_ids=2, n_pairs=20, img_size=16)
    train = lookup("dataset", "synthids")(split="train", **kw)
    val = lookup("dataset", "synthids")(split="val", **kw)
    assert len(train) == 6 and len(val) == 40 and val.issame.shape == (20,)
    ff = lookup("dataset", "face_folder")(root=str(tmp_path / "s" / "train"), img_size=16)
    assert len(ff) == 6
