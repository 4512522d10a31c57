"""WIDER FACE readers: label.txt parsing and its errors, the train dataset, the val dataset, collate."""
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detkd.data.loader import batch_image_sizes, collate_detection
from detkd.data.widerface import WiderFaceTrain, WiderFaceVal, read_label_txt
from detkd.registry import lookup

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
LM = "488.906 373.643 0.0 542.089 376.442 0.0 515.031 412.83 0.0 485.741 433.23 0.0 538.48 429.395 0.0 0.82"
NO_LM = " ".join(["-1.0"] * 15) + " 0.3"


def _write_root(tmp_path: Path, label_text: str, images: dict[str, tuple[int, int]]) -> Path:
    root = tmp_path / "wider"
    (root / "train").mkdir(parents=True)
    (root / "train" / "label.txt").write_text(label_text)
    for rel, (h, w) in images.items():
        p = root / "train" / "images" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(p), img)
    return root


LABEL = f"""# 0--Parade/a_1.jpg
449 330 122 149 {LM}
10 20 30 40 {NO_LM}
# 0--Parade/b_2.jpg
5 6 7 8
# 1--Handshaking/c_3.jpg
"""


def test_read_label_txt_parses_boxes_landmarks_and_validity(tmp_path):
    root = _write_root(tmp_path, LABEL, {})
    recs = read_label_txt(root / "train" / "label.txt")
    assert [r.rel for r in recs] == ["0--Parade/a_1.jpg", "0--Parade/b_2.jpg", "1--Handshaking/c_3.jpg"]
    assert recs[0].path == root / "train" / "images" / "0--Parade" / "a_1.jpg"
    np.testing.assert_allclose(recs[0].boxes, [[449, 330, 571, 479], [10, 20, 40, 60]])
    np.testing.assert_allclose(recs[0].landmarks[0, 0], [488.906, 373.643], rtol=1e-6)
    np.testing.assert_allclose(recs[0].landmarks[0, 4], [538.48, 429.395], rtol=1e-6)
    assert recs[0].landmarks_valid.tolist() == [True, False]
    assert recs[1].boxes.shape == (1, 4) and recs[1].landmarks_valid.tolist() == [False]  # 4-value line
    assert recs[2].boxes.shape == (0, 4) and recs[2].landmarks.shape == (0, 5, 2)


def test_malformed_line_names_file_and_line(tmp_path):
    bad = tmp_path / "label.txt"
    bad.write_text("# 0--Parade/a.jpg\n1 2 3 4\n1 2 3 4 5 6\n")
    with pytest.raises(ValueError, match=r"label\.txt:3: .*got 6.*'1 2 3 4 5 6'"):
        read_label_txt(bad)
    bad.write_text("# 0--Parade/a.jpg\n1 2 x 4\n")
    with pytest.raises(ValueError, match=r"label\.txt:2: non-numeric.*'1 2 x 4'"):
        read_label_txt(bad)
    bad.write_text("1 2 3 4\n")
    with pytest.raises(ValueError, match=r"label\.txt:1: face line before"):
        read_label_txt(bad)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_label_txt(tmp_path / "missing.txt")


def test_non_positive_boxes_are_dropped_with_one_warning_per_file(tmp_path):
    f = tmp_path / "label.txt"
    f.write_text("# e/a.jpg\n1 2 0 4\n1 2 3 4\n# e/b.jpg\n1 2 3 -2\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = read_label_txt(f)
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "dropped 2 face(s)" in msgs[0] and str(f) in msgs[0]
    assert [len(r.boxes) for r in recs] == [1, 0]


def test_train_dataset_samples_targets_and_empty_images(tmp_path):
    root = _write_root(tmp_path, LABEL, {"0--Parade/a_1.jpg": (600, 800), "0--Parade/b_2.jpg": (40, 60),
                                         "1--Handshaking/c_3.jpg": (50, 50)})
    ds = WiderFaceTrain(root, img_size=64, augment=True, seed=1)
    assert len(ds) == 3
    img, tgt, meta = ds[0]
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 255
    assert set(tgt) == {"boxes", "labels", "landmarks", "landmarks_valid"}
    n = len(tgt["boxes"])
    assert 1 <= n <= 2 and tgt["labels"].tolist() == [1] * n and tgt["landmarks"].shape == (n, 5, 2)
    assert meta["orig_size"] == (600, 800) and meta["path"].endswith("a_1.jpg")
    img, tgt, _ = ds[2]  # no faces: a valid sample with an empty target
    assert img.shape == (3, 64, 64) and tgt["boxes"].shape == (0, 4) and tgt["landmarks_valid"].shape == (0,)
    images, targets, metas = collate_detection([ds[i] for i in range(3)])
    assert images.shape == (3, 3, 64, 64) and len(targets) == len(metas) == 3
    plain = WiderFaceTrain(root, img_size=64, augment=False)
    _, t, _ = plain[1]  # 40x60 image padded to 60x60, resized to 64: box (5,6,12,14) * 64/60
    np.testing.assert_allclose(t["boxes"][0].numpy(), np.array([5, 6, 12, 14]) * 64 / 60, rtol=1e-5)


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path):
    root = _write_root(tmp_path, LABEL, {"0--Parade/a_1.jpg": (300, 400), "0--Parade/b_2.jpg": (40, 60),
                                         "1--Handshaking/c_3.jpg": (50, 50)})
    a, b = WiderFaceTrain(root, img_size=48, seed=5), WiderFaceTrain(root, img_size=48, seed=5)
    a.set_epoch(3), b.set_epoch(3)
    xa, ta, _ = a[0]
    _ = b[1]  # access order must not matter
    xb, tb, _ = b[0]
    assert torch.equal(xa, xb) and torch.equal(ta["boxes"], tb["boxes"])
    b.set_epoch(4)
    xc, tc, _ = b[0]
    assert not (torch.equal(xa, xc) and torch.equal(ta["boxes"], tc["boxes"]))


def test_corrupt_and_missing_images_name_the_file(tmp_path):
    root = _write_root(tmp_path, LABEL, {"0--Parade/b_2.jpg": (40, 60)})
    (root / "train" / "images" / "0--Parade" / "a_1.jpg").write_bytes(b"\xff\xd8not really a jpeg")
    ds = WiderFaceTrain(root, img_size=32)
    with pytest.raises(ValueError, match=r"corrupt.*a_1\.jpg"):
        ds[0]
    with pytest.raises(FileNotFoundError, match=r"c_3\.jpg"):
        ds[2]


def test_collate_pads_mixed_sizes_bottom_right_and_keeps_sizes_and_metas():
    s = {"boxes": torch.zeros(0, 4)}
    a, b = torch.full((3, 40, 70), 7.0), torch.full((3, 66, 30), 9.0)
    images, targets, metas = collate_detection([(a, s, {"path": "a"}), (b, s, {"path": "b"})])
    assert images.shape == (2, 3, 96, 96) and images.dtype == torch.float32  # ceil(66/32)*32, ceil(70/32)*32
    assert (images[0, :, :40, :70] == 7).all()
    assert images[0, :, 40:].abs().sum() == 0 and (images[0, :, :, 70:] == 0).all()
    assert (images[1, :, :66, :30] == 9).all() and images[1, :, 66:].abs().sum() == 0
    assert [m["image_size"] for m in metas] == [(40, 70), (66, 30)] and [m["path"] for m in metas] == ["a", "b"]
    assert batch_image_sizes((images, targets, metas)) == [(40, 70), (66, 30)]
    one, _, _ = collate_detection([(a, s, {}), (b, s, {})], size_divisor=1, pad_value=5.0)
    assert one.shape == (2, 3, 66, 70) and (one[0, :, 40:] == 5).all()
    same, _, _ = collate_detection([(torch.ones(3, 64, 64), s, {}), (torch.ones(3, 64, 64), s, {})])
    assert same.shape == (2, 3, 64, 64) and (same == 1).all()  # already a multiple of 32: no padding
    with pytest.raises(ValueError, match=r"image b has shape \(66, 30\)"):
        collate_detection([(a, s, {"path": "a"}), (b[0], s, {"path": "b"})])


def test_keep_ratio_resize_short_side_and_long_cap():
    from detkd.data.transforms import keep_ratio_scale, resize_keep_ratio

    assert keep_ratio_scale(375, 500, 600, 1000) == pytest.approx(1.6)  # VOC-like: short side 375 -> 600
    assert keep_ratio_scale(300, 1000, 600, 1000) == pytest.approx(1.0)  # the long side caps the scale
    image = np.zeros((375, 500, 3), np.uint8)
    boxes = np.array([[10, 20, 110, 220]], np.float32)
    lms = np.ones((1, 5, 2), np.float32) * 50
    out, b, lm, (sy, sx) = resize_keep_ratio(image, boxes, lms, 600, 1000)
    assert out.shape == (600, 800, 3) and sy == sx == pytest.approx(1.6)
    np.testing.assert_allclose(b, boxes * 1.6, rtol=1e-6)
    np.testing.assert_allclose(lm, lms * 1.6, rtol=1e-6)
    out, b, _, (sy, sx) = resize_keep_ratio(np.zeros((333, 500, 3), np.uint8), boxes, None, 800, 1333)
    assert out.shape == (800, int(500 * 800 / 333 + 0.5), 3) and sy == 800 / 333


def test_val_dataset_on_written_gt(tmp_path):
    from detkd.data.widerface import WiderGT, save_gt

    gt = WiderGT(events=["0--Parade", "1--Handshaking"], images=[("0--Parade", "p_1"), ("1--Handshaking", "h_2")],
                 boxes=[np.array([[1, 2, 3, 4]], np.int32), np.zeros((0, 4), np.int32)],
                 keep={s: [np.array([0]), np.array([], np.int64)] for s in ("easy", "medium", "hard")})
    root = tmp_path / "w"
    save_gt(gt, root / "val" / "gt")
    img = np.zeros((10, 12, 3), np.uint8)
    img[..., 2] = 200  # red in BGR -> must come back as R
    (root / "val" / "images" / "0--Parade").mkdir(parents=True)
    cv2.imwrite(str(root / "val" / "images" / "0--Parade" / "p_1.png"), img)
    (root / "val" / "images" / "0--Parade" / "p_1.png").rename(root / "val" / "images" / "0--Parade" / "p_1.jpg")
    ds = WiderFaceVal(root)
    assert len(ds) == 2
    image, meta = ds[0]
    assert image.shape == (10, 12, 3) and image.dtype == np.uint8 and image[0, 0, 0] == 200 and image[0, 0, 2] == 0
    assert (meta["event"], meta["name"]) == ("0--Parade", "p_1") and meta["path"].endswith("p_1.jpg")
    with pytest.raises(FileNotFoundError, match=r"1--Handshaking/h_2\.jpg"):
        ds[1]
    built = lookup("dataset", "widerface")(root=str(root), split="val")
    assert isinstance(built, WiderFaceVal) and len(built) == 2


def test_val_dataset_lists_all_real_entries_without_images(tmp_path):
    gt_dir = SHARED / "widerface_val_gt"
    if not (gt_dir / "wider_face_val.mat").is_file():
        pytest.skip(f"real WIDER val GT not found at {gt_dir}")
    ds = WiderFaceVal(tmp_path, gt_dir)
    assert len(ds) == 3226
    assert ds.gt.images[0][0] == "0--Parade"
    with pytest.raises(FileNotFoundError, match=ds.gt.images[0][1]):
        ds[0]


def test_val_dataset_reads_the_real_image_from_a_flat_folder():
    gt_dir, images = SHARED / "widerface_val_gt", SHARED / "images" / "widerface_val"
    name = "11_Meeting_Meeting_11_Meeting_Meeting_11_176"
    if not (gt_dir / "wider_face_val.mat").is_file() or not (images / f"{name}.jpg").is_file():
        pytest.skip(f"real WIDER val GT or image not found under {SHARED}")
    ds = WiderFaceVal(images, gt_dir)
    i = ds.gt.index("11--Meeting", name)
    image, meta = ds[i]
    assert image.shape == (683, 1024, 3) and meta["name"] == name and len(meta["boxes"]) == 17
