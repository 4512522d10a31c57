"""Face verification protocol (EVAL.md §3, METHODS.md §5.7)."""
import json

import numpy as np
import pytest
import torch

from detkd.data.facerec import write_bin
from detkd.eval.verification import (
    ACC_THRESHOLDS, VAL_THRESHOLDS, accuracy_folds, embed_images, evaluate_pairs, fold_bounds, slinear_interp,
    tar_at_far, verify_bin, verify_weights,
)
from detkd.models.facerec import mobilefacenet


def _perfect(n_pairs=40, dim=64):
    """Same pairs identical, different pairs orthogonal; LFW-like fold order."""
    e1 = np.eye(dim)[: n_pairs % dim or dim][np.arange(n_pairs) % dim]
    issame = np.tile(np.repeat([True, False], n_pairs // 20), 10)
    e2 = np.where(issame[:, None], e1, np.roll(e1, 1, axis=1))
    return e1, e2, issame


def test_perfect_embeddings_accuracy_one():
    e1, e2, issame = _perfect()
    r = evaluate_pairs(e1, e2, issame)
    assert r["acc"] == 1.0 and r["acc_std"] == 0.0
    assert np.all((r["best_thresholds"] > 0) & (r["best_thresholds"] <= 2))
    assert r["best_thresholds"][0] == pytest.approx(0.01)  # first maximum: smallest θ with d=0 < θ
    assert r["tar_far_1e-2"] == 1.0 and r["tar_far_1e-3"] == 1.0
    fpr, tpr = r["roc"]
    assert fpr.shape == tpr.shape == (400,) and tpr[-1] == 1.0 and fpr[0] == 0.0


def test_hand_built_folds_and_thresholds():
    # 2 pairs per fold: a same pair at d=0.5 and a different pair at d=1.5004; fold 0's same pair is at d=1.7.
    dist = np.tile([0.5, 1.5004], 10)
    dist[0] = 1.7
    issame = np.tile([True, False], 10)
    acc, best, _, _ = accuracy_folds(dist, issame)
    # every training split is best separated by the smallest θ above 0.5
    assert best.tolist() == pytest.approx([0.51] * 10)
    assert acc.tolist() == [0.5] + [1.0] * 9
    assert acc.mean() == pytest.approx(0.95) and acc.std() == pytest.approx(0.15)
    tar, tar_std, far = tar_at_far(dist, issame, 1e-2)
    # FAR jumps 0 -> 1 between θ=1.500 and 1.501: θ* = 1.500 + 0.001·0.01 rejects the different pair
    assert (tar, tar_std, far) == pytest.approx((0.9, 0.3, 0.0))
    # no different pair is ever accepted -> max FAR < target -> θ* = 0 -> nothing accepted
    dist_far = np.tile([0.5, 4.0], 10)
    assert tar_at_far(dist_far, issame, 1e-3) == (0.0, 0.0, 0.0)


def test_fold_bounds_match_sklearn_kfold():
    assert np.diff(fold_bounds(25)).tolist() == [3, 3, 3, 3, 3, 2, 2, 2, 2, 2]
    assert fold_bounds(6000)[1] == 600
    with pytest.raises(ValueError, match="at least 10 pairs"):
        fold_bounds(9)


def _reference_accuracy(dist, issame):
    """The insightface calculate_roc loop, written plainly."""
    bounds = fold_bounds(len(dist))
    accs = []
    for f in range(10):
        test = np.zeros(len(dist), bool)
        test[bounds[f] : bounds[f + 1]] = True
        train_acc = [np.mean((dist[~test] < t) == issame[~test]) for t in ACC_THRESHOLDS]
        t = ACC_THRESHOLDS[int(np.argmax(train_acc))]
        accs.append(np.mean((dist[test] < t) == issame[test]))
    return np.array(accs)


def test_matches_plain_reference_loop_on_noisy_embeddings():
    rng = np.random.default_rng(0)
    n = 203  # uneven folds
    issame = rng.random(n) < 0.5
    e1 = rng.normal(size=(n, 16))
    e2 = np.where(issame[:, None], e1 + rng.normal(scale=1.2, size=(n, 16)), rng.normal(size=(n, 16)))
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
    dist = np.sum((e1 - e2) ** 2, 1)
    acc, _, _, _ = accuracy_folds(dist, issame)
    assert np.allclose(acc, _reference_accuracy(dist, issame))
    r = evaluate_pairs(e1, e2, issame)
    assert 0.5 < r["acc"] < 1.0


def test_slinear_matches_scipy_order1_bspline_with_duplicates():
    interpolate = pytest.importorskip("scipy.interpolate")
    x = np.array([0, 0, 0, 0.1, 0.1, 0.2, 0.5, 0.5, 1.0, 1.0])
    y = np.arange(len(x)) * 0.5
    # what interp1d(kind='slinear') built before SciPy rejected duplicate x: knots [x0, x, x_n], coefficients y
    spline = interpolate.BSpline.construct_fast(np.r_[x[0], x, x[-1]], y, 1)
    for v in [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 0.99]:
        assert slinear_interp(x, y, v) == pytest.approx(float(spline(v)), abs=1e-12), v
    assert slinear_interp(x, y, 1.0) == y[8]  # first occurrence of max x
    x2, y2 = x[:-1], y[:-1]  # max not repeated: the spline's end value
    spline2 = interpolate.BSpline.construct_fast(np.r_[x2[0], x2, x2[-1]], y2, 1)
    assert slinear_interp(x2, y2, 1.0) == pytest.approx(float(spline2(1.0))) == y2[-1]
    with pytest.raises(ValueError, match="outside"):
        slinear_interp(x, y, 1.5)


def test_tar_far_matches_reference_with_scipy_bspline():
    interpolate = pytest.importorskip("scipy.interpolate")
    rng = np.random.default_rng(1)
    n = 400
    issame = np.tile(np.repeat([True, False], 20), 10)
    dist = np.where(issame, rng.uniform(0.2, 1.6, n), rng.uniform(1.0, 3.0, n))
    bounds = fold_bounds(n)
    tars = []
    for f in range(10):
        test = np.zeros(n, bool)
        test[bounds[f] : bounds[f + 1]] = True
        diff = ~issame[~test]
        far_train = np.array([np.sum((dist[~test] < t) & diff) / diff.sum() for t in VAL_THRESHOLDS])
        spline = interpolate.BSpline.construct_fast(np.r_[far_train[0], far_train, far_train[-1]], VAL_THRESHOLDS, 1)
        theta = float(spline(1e-2)) if far_train.max() >= 1e-2 else 0.0
        tars.append(np.mean(dist[test & issame] < theta))
    tar, tar_std, _ = tar_at_far(dist, issame, 1e-2)
    assert tar == pytest.approx(np.mean(tars)) and tar_std == pytest.approx(np.std(tars))


class _PixelModel(torch.nn.Module):
    """Embedding = the left-half and right-half mean of each channel: flip-sum makes it symmetric."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.input_size = 8
        self.seen_training = None

    def forward(self, x):
        self.seen_training = self.training
        w = x.shape[-1] // 2
        return torch.cat([x[..., :w].mean((2, 3)), x[..., w:].mean((2, 3))], 1) + self.dummy


def test_embed_images_flip_sum_eval_mode_restored():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    model = _PixelModel().train()
    emb = embed_images(model, imgs, batch_size=2)
    assert model.seen_training is False and model.training is True
    x = imgs.astype(np.float64)
    left, right = x[:, :, :4].mean((1, 2)), x[:, :, 4:].mean((1, 2))
    raw = np.concatenate([left + right, right + left], 1)  # f(x) + f(flip x)
    assert np.allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_verify_bin_and_weights_cli(tmp_path, capsys):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = mobilefacenet(input_size=32).eval()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    imgs[1::2][:10] = imgs[0::2][:10]  # first 10 pairs identical
    issame = [True] * 10 + [False] * 10
    write_bin(tmp_path / "v.bin", imgs, issame, fmt=".png")
    r = verify_bin(model, tmp_path / "v.bin", batch_size=16, roc_png=tmp_path / "roc.png")
    assert r["num_pairs"] == 20 and (tmp_path / "roc.png").stat().st_size > 0
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    (tmp_path / "m.json").write_text(json.dumps({"model": {"name": "mobilefacenet", "input_size": 32}}))
    r2 = verify_weights(tmp_path / "m.safetensors", tmp_path / "v.bin", batch_size=16)
    assert capsys.readouterr().out == ""  # the library prints nothing; the CLI prints once
    assert r2["acc"] == pytest.approx(r["acc"])
    (tmp_path / "m.json").write_text(json.dumps({"model": {"name": "iresnet18", "input_size": 32}}))
    with pytest.raises(ValueError, match="does not fit"):
        verify_weights(tmp_path / "m.safetensors", tmp_path / "v.bin")
    (tmp_path / "m.json").unlink()
    with pytest.raises(FileNotFoundError, match="model card"):
        verify_weights(tmp_path / "m.safetensors", tmp_path / "v.bin")


def test_mismatched_inputs_are_errors():
    with pytest.raises(ValueError, match="issame"):
        evaluate_pairs(np.ones((20, 4)), np.ones((20, 4)), [True] * 19)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        evaluate_pairs(np.ones((20, 4)), np.ones((20, 5)), [True] * 20)
