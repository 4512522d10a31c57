"""The §1.5 augmentation: geometry stays consistent, flips keep landmark order, randomness is reproducible."""
import cv2
import numpy as np
import pytest

from detkd.data import transforms as T


def _face_image():
    """A black 300x400 image with one 100x120 face whose 5 landmarks are white 7x7 squares."""
    img = np.zeros((300, 400, 3), np.uint8)
    boxes = np.array([[150, 90, 250, 210]], np.float32)
    lms = np.array([[[175, 130], [225, 130], [212, 160], [180, 185], [220, 185]]], np.float32)
    for x, y in lms[0]:
        cv2.rectangle(img, (int(x) - 3, int(y) - 3), (int(x) + 3, int(y) + 3), (255, 255, 255), -1)
    return img, boxes, lms, np.array([True])


def test_train_transform_keeps_boxes_inside_and_landmarks_on_their_markers():
    img, boxes, lms, valid = _face_image()
    flipped_seen = unflipped_seen = 0
    for s in range(40):
        out, b, lm, v = T.train_transform(img, boxes, lms, valid, 160, np.random.default_rng(s))
        assert out.shape == (3, 160, 160) and out.dtype.is_floating_point
        assert len(b) == len(lm) == len(v) == 1  # the only face always has its centre inside an accepted crop
        assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 160).all() and (b[:, 2:] > b[:, :2]).all()
        # landmark 0/1 (eyes) and 3/4 (mouth corners) are always ordered left -> right in the image
        assert lm[0, 0, 0] < lm[0, 1, 0] and lm[0, 3, 0] < lm[0, 4, 0]
        gray = out.mean(0).numpy()
        for x, y in lm[0]:
            if 1 <= x <= 158 and 1 <= y <= 158:  # not clamped to the crop border
                assert gray[int(y), int(x)] > gray.mean() + 10, (s, x, y)
        # the nose sits right of the box centre; a flip mirrors it to the left (checked on unclipped boxes)
        w, h = b[0, 2] - b[0, 0], b[0, 3] - b[0, 1]
        if abs(w / h - 100 / 120) < 0.02:
            rel = (lm[0, 2, 0] - b[0, 0]) / w  # 0.62 unflipped, 0.38 flipped
            assert min(abs(rel - 0.62), abs(rel - 0.38)) < 0.02
            unflipped_seen += rel > 0.5
            flipped_seen += rel < 0.5
    assert flipped_seen and unflipped_seen


def test_train_transform_is_a_function_of_the_generator_seed():
    img, boxes, lms, valid = _face_image()
    a = T.train_transform(img, boxes, lms, valid, 96, np.random.default_rng([3, 1, 7]))
    b = T.train_transform(img, boxes, lms, valid, 96, np.random.default_rng([3, 1, 7]))
    c = T.train_transform(img, boxes, lms, valid, 96, np.random.default_rng([3, 2, 7]))
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))


def test_crop_keeps_only_faces_with_centres_inside_and_clips_them():
    img = np.zeros((200, 300, 3), np.uint8)
    boxes = np.array([[10, 10, 60, 60], [120, 80, 160, 130], [250, 150, 299, 199]], np.float32)
    lms = np.zeros((3, 5, 2), np.float32) + ((boxes[:, :2] + boxes[:, 2:]) / 2)[:, None]
    valid = np.array([True, False, True])
    for s in range(30):
        crop, b, lm, v, pad = T.random_square_crop(img, boxes, lms, valid, np.random.default_rng(s))
        assert not pad
        side = crop.shape[0]
        assert crop.shape[:2] == (side, side) and side <= 200
        assert 1 <= len(b) <= 3 and len(b) == len(lm) == len(v)
        assert (b >= 0).all() and (b <= side).all()
        assert (lm >= 0).all() and (lm <= side).all()


def test_crop_without_faces_falls_back_to_full_image_and_pads_with_mean():
    img = np.full((50, 80, 3), 7, np.uint8)
    empty = np.zeros((0, 4), np.float32)
    crop, b, lm, v, pad = T.random_square_crop(img, empty, np.zeros((0, 5, 2), np.float32), np.zeros(0, bool),
                                               np.random.default_rng(0))
    assert pad and crop is img and len(b) == 0
    sq = T.pad_to_square(crop)
    assert sq.shape == (80, 80, 3)
    assert (sq[:50] == 7).all() and (sq[50:] == np.array(T.MEAN_RGB, np.uint8)).all()
    out, b2, lm2, v2 = T.train_transform(img, empty, np.zeros((0, 5, 2), np.float32), np.zeros(0, bool), 64,
                                         np.random.default_rng(1))
    assert out.shape == (3, 64, 64) and b2.shape == (0, 4) and lm2.shape == (0, 5, 2)


def test_hflip_mirrors_boxes_and_swaps_landmark_pairs():
    img, boxes, lms, _ = _face_image()
    seed = next(s for s in range(100) if np.random.default_rng(s).integers(2))
    out, b, lm = T.random_hflip(img, boxes, lms, np.random.default_rng(seed))
    np.testing.assert_allclose(b[0], [400 - 250, 90, 400 - 150, 210])
    np.testing.assert_allclose(lm[0, 0], [400 - 225, 130])  # new left eye = mirrored old right eye
    np.testing.assert_allclose(lm[0, 3], [400 - 220, 185])
    np.testing.assert_array_equal(out, img[:, ::-1])


def test_photometric_distort_stays_uint8_and_varies():
    rng_img = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    outs = [T.photometric_distort(rng_img, np.random.default_rng(s)) for s in range(8)]
    assert all(o.dtype == np.uint8 and o.shape == rng_img.shape for o in outs)
    assert any(not np.array_equal(o, rng_img) for o in outs)
    np.testing.assert_array_equal(outs[3], T.photometric_distort(rng_img, np.random.default_rng(3)))


def test_resize_eval_keeps_aspect_and_reports_scale():
    img = np.full((100, 200, 3), 50, np.uint8)
    out, scale = T.resize_eval(img, 320)
    assert out.shape == (3, 320, 320) and scale == pytest.approx(1.6)
    assert float(out[0, 10, 10]) == 50 and float(out[0, 300, 10]) == T.MEAN_RGB[0]
