"""Face verification on insightface ``.bin`` pairs, exactly as EVAL.md §3 / METHODS.md §5.7.

- Embedding: ``e = L2-normalise(f(x) + f(hflip(x)))``, the raw (un-normalised) outputs summed first.
- Distance of pair k: ``d_k = ‖e_2k − e_2k+1‖²`` ∈ [0, 4]; "same" iff ``d < θ`` (strict).
- Folds: 10 contiguous blocks of pairs in file order (sklearn ``KFold(10, shuffle=False)``: the first
  ``N % 10`` folds get one extra pair).
- Accuracy: per fold, θ ∈ ``np.arange(0, 4, 0.01)`` maximising the accuracy on the 9 other folds (first
  maximum = smallest θ on ties), applied to the held-out fold; mean ± population std over folds.
- TAR@FAR: per fold, FAR(θ) on the training folds for θ ∈ ``np.arange(0, 4, 0.001)``; if max FAR ≥ target,
  θ* = scipy-style ``interp1d(FAR, θ, kind='slinear')`` at the target (reimplemented in numpy, see
  ``slinear_interp``), else θ* = 0; TAR = TA/#same and FAR = FA/#diff on the held-out fold; mean over folds.
  (A fold without same/different pairs counts 0 for that rate.)
- Reached: ``tar_far_*_reached`` is True iff every fold's training FAR curve reaches the target and the mean
  held-out FAR is at most the target plus one false accept per fold (``1 / mean #diff per fold``, the finest
  FAR a fold can measure). Otherwise the TAR is not a TAR at that FAR (a collapsed model accepts every pair:
  FAR 1.0, "TAR" 100%): reports print "not reached (FAR reached x)" and always give the FAR reached.
- ROC: TPR/FPR of each θ of the accuracy grid on each held-out fold, averaged over folds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from detkd.data.facerec import read_bin

ACC_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
N_FOLDS = 10
FAR_TARGETS = {"tar_far_1e-2": 1e-2, "tar_far_1e-3": 1e-3}


# ------------------------------------------------------------------------------------------ folds and counts


def fold_bounds(n: int, n_folds: int = N_FOLDS) -> np.ndarray:
    """Start offsets of the contiguous folds plus the end, ``[n_folds + 1]`` (sklearn KFold sizes)."""
    if n < n_folds:
        raise ValueError(f"need at least {n_folds} pairs for {n_folds}-fold verification, got {n}")
    sizes = np.full(n_folds, n // n_folds)
    sizes[: n % n_folds] += 1
    return np.concatenate([[0], np.cumsum(sizes)])


def _fold_counts(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray, bounds: np.ndarray):
    """Per fold and threshold: true accepts, false accepts ``[F, T]``; #same, #diff per fold ``[F]``."""
    pred = dist[None, :] < thresholds[:, None]  # [T, N]
    starts = bounds[:-1]
    ta = np.add.reduceat(pred & issame[None, :], starts, axis=1).T  # [F, T]
    fa = np.add.reduceat(pred & ~issame[None, :], starts, axis=1).T  # [F, T]
    n_same = np.add.reduceat(issame.astype(np.int64), starts)  # [F]
    n_diff = np.add.reduceat((~issame).astype(np.int64), starts)  # [F]
    return ta.astype(np.int64), fa.astype(np.int64), n_same, n_diff


def _rate(num: np.ndarray, den) -> np.ndarray:
    den = np.asarray(den, dtype=np.float64)
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


# ------------------------------------------------------------------------------------------ interpolation


def slinear_interp(x: np.ndarray, y: np.ndarray, v: float) -> float:
    """What ``scipy.interpolate.interp1d(x, y, kind='slinear')(v)`` returned before SciPy rejected duplicate x.

    x is stable-sorted; the order-1 B-spline with knots ``[x0, x..., xn]`` and coefficients y is evaluated
    right-continuously: with i the last index where ``x_i ≤ v``, linear between (x_i, y_i) and (x_i+1, y_i+1);
    at ``v = max x`` the value is y at the first occurrence of max x (SciPy's spline gave a degenerate 0 there
    when max x was repeated; with FAR this needs target == max FAR). ``v`` must lie in [min x, max x].
    """
    order = np.argsort(x, kind="mergesort")
    x, y = np.asarray(x, np.float64)[order], np.asarray(y, np.float64)[order]
    if not x[0] <= v <= x[-1]:
        raise ValueError(f"value {v} outside the interpolation range [{x[0]}, {x[-1]}]")
    if v == x[-1]:
        return float(y[np.searchsorted(x, x[-1], side="left")])
    i = int(np.searchsorted(x, v, side="right")) - 1
    return float(y[i] + (y[i + 1] - y[i]) * (v - x[i]) / (x[i + 1] - x[i]))


# ------------------------------------------------------------------------------------------ metrics


def pair_distances(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Squared L2 distance per pair ``[N]`` (embeddings are used as given, normally L2-normalised)."""
    emb1, emb2 = np.asarray(emb1, np.float64), np.asarray(emb2, np.float64)
    if emb1.shape != emb2.shape or emb1.ndim != 2:
        raise ValueError(f"embedding arrays must both be [N, D], got {emb1.shape} and {emb2.shape}")
    return np.sum(np.square(emb1 - emb2), axis=1)


def accuracy_folds(dist: np.ndarray, issame: np.ndarray, n_folds: int = N_FOLDS):
    """``(fold accuracies [F], best thresholds [F], tpr [T], fpr [T])`` of the 10-fold protocol."""
    issame = np.asarray(issame, bool)
    bounds = fold_bounds(len(dist), n_folds)
    th = ACC_THRESHOLDS
    ta, fa, n_same, n_diff = _fold_counts(dist, issame, th, bounds)
    sizes = np.diff(bounds)
    tn = n_diff[:, None] - fa
    correct = ta + tn  # [F, T]
    acc, best = np.zeros(n_folds), np.zeros(n_folds)
    for f in range(n_folds):
        train_correct = correct.sum(0) - correct[f]  # [T]
        k = int(np.argmax(train_correct))  # first maximum
        best[f] = th[k]
        acc[f] = correct[f, k] / sizes[f]
    tpr = _rate(ta, n_same[:, None]).mean(0)
    fpr = _rate(fa, n_diff[:, None]).mean(0)
    return acc, best, tpr, fpr


def tar_at_far(dist: np.ndarray, issame: np.ndarray, far_target: float, n_folds: int = N_FOLDS):
    """``(mean TAR, std TAR, mean FAR)`` over folds (insightface ``calculate_val``)."""
    issame = np.asarray(issame, bool)
    bounds = fold_bounds(len(dist), n_folds)
    th = VAL_THRESHOLDS
    _, fa, n_same, n_diff = _fold_counts(dist, issame, th, bounds)
    fa_total, diff_total = fa.sum(0), n_diff.sum()
    tar, far = np.zeros(n_folds), np.zeros(n_folds)
    for f in range(n_folds):
        far_train = _rate(fa_total - fa[f], diff_total - n_diff[f])  # [T]
        theta = slinear_interp(far_train, th, far_target) if far_train.max() >= far_target else 0.0
        lo, hi = bounds[f], bounds[f + 1]
        pred = dist[lo:hi] < theta
        same = issame[lo:hi]
        tar[f] = _rate(np.sum(pred & same), same.sum())
        far[f] = _rate(np.sum(pred & ~same), (~same).sum())
    return float(tar.mean()), float(tar.std()), float(far.mean())


def far_reached(dist: np.ndarray, issame: np.ndarray, far_target: float, far: float,
                n_folds: int = N_FOLDS) -> bool:
    """Whether TAR@``far_target`` is a TAR at that FAR (see the module docstring): the training FAR curves
    reach the target and the mean held-out FAR ``far`` is at most target + 1 / (mean #diff per fold)."""
    issame = np.asarray(issame, bool)
    bounds = fold_bounds(len(dist), n_folds)
    n_diff = np.add.reduceat((~issame).astype(np.int64), bounds[:-1])  # [F]
    if n_diff.sum() == 0:
        return False
    _, fa, _, nd = _fold_counts(dist, issame, VAL_THRESHOLDS, bounds)
    for f in range(n_folds):
        far_train = _rate(fa.sum(0) - fa[f], nd.sum() - nd[f])
        if far_train.max() < far_target:
            return False
    return bool(far <= far_target + 1.0 / n_diff.mean() + 1e-12)


def evaluate_pairs(emb1: np.ndarray, emb2: np.ndarray, issame) -> dict:
    """Verification metrics of normalised pair embeddings ``[N, D]`` and labels ``[N]``.

    Returns ``acc``, ``acc_std`` (population std), ``best_thresholds [10]``, ``tar_far_1e-2``,
    ``tar_far_1e-3`` (mean TAR at each FAR target, with ``*_std``, ``*_far`` the mean FAR reached and
    ``*_reached`` whether that FAR is the target's, see ``far_reached``),
    ``roc=(fpr [400], tpr [400])`` and ``num_pairs``.
    """
    issame = np.asarray(issame, bool).reshape(-1)
    dist = pair_distances(emb1, emb2)
    if len(dist) != len(issame):
        raise ValueError(f"{len(dist)} pairs of embeddings but {len(issame)} issame labels")
    acc, best, tpr, fpr = accuracy_folds(dist, issame)
    out = {"acc": float(acc.mean()), "acc_std": float(acc.std()), "fold_acc": acc,
           "best_thresholds": best, "num_pairs": int(len(dist))}
    for key, target in FAR_TARGETS.items():
        tar, tar_std, far = tar_at_far(dist, issame, target)
        out[key], out[f"{key}_std"], out[f"{key}_far"] = tar, tar_std, far
        out[f"{key}_reached"] = far_reached(dist, issame, target, far)
    out["roc"] = (fpr, tpr)
    return out


# ------------------------------------------------------------------------------------------ embedding


def _embedding(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.embedding if hasattr(out, "embedding") else out


@torch.no_grad()
def embed_images(model: nn.Module, images_uint8: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """``images uint8 [M, H, W, 3]`` RGB -> float32 ``[M, D]`` = normalise(f(x) + f(hflip(x))).

    The model gets float32 ``[B, 3, H, W]`` in 0..255 (it normalises itself), in eval mode; its previous
    mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    chunks = []
    try:
        for i in range(0, len(images_uint8), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images_uint8[i : i + batch_size]))
            x = batch.permute(0, 3, 1, 2).float().to(device)  # [B, 3, H, W]
            e = _embedding(model, x) + _embedding(model, torch.flip(x, dims=[3]))  # [B, D]
            chunks.append(torch.nn.functional.normalize(e.float(), dim=1).cpu())
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("embed_images: no images")
    return torch.cat(chunks).numpy()


def save_roc_png(fpr: np.ndarray, tpr: np.ndarray, path: str | Path, title: str = "verification ROC") -> Path:
    """ROC curve (log FAR axis) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4))
    keep = fpr > 0
    ax.plot(fpr[keep], tpr[keep])
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def verify_bin(model: nn.Module, bin_path: str | Path, batch_size: int = 64, roc_png: str | Path | None = None,
               image_size: int | None = None) -> dict:
    """Read a ``.bin``, embed with flip fusion, return ``evaluate_pairs`` metrics (and write the ROC PNG).

    ``image_size`` defaults to ``model.input_size`` (else 112).
    """
    size = image_size or int(getattr(model, "input_size", 112))
    images, issame = read_bin(bin_path, size)
    emb = embed_images(model, images, batch_size)
    out = evaluate_pairs(emb[0::2], emb[1::2], issame)
    out["bin"] = str(bin_path)
    if roc_png is not None:
        fpr, tpr = out["roc"]
        out["roc_png"] = str(save_roc_png(fpr, tpr, roc_png, title=f"ROC {Path(bin_path).name}"))
    return out


# ------------------------------------------------------------------------------------------ exported weights


def load_face_model(weights_path: str | Path) -> nn.Module:
    """A face recognizer from a detkd model file (``detkd.models.weights.load_model_file``); the training
    head (``head.*``) may be absent from the file (embedding-only exports)."""
    from detkd.engine.checkpoint import expect_model_kind
    from detkd.models.weights import load_model_file

    expect_model_kind(weights_path, ("face recognizer",), "weights")
    return load_model_file(weights_path, allow_missing=("head.",))[0]


def summary(result: dict) -> dict:
    """JSON-safe scalar view of a result (arrays -> lists, the ROC dropped)."""
    out = {}
    for k, v in result.items():
        if k == "roc":
            continue
        out[k] = v.tolist() if isinstance(v, np.ndarray) else v
    return out


def format_tar(result: dict, key: str) -> str:
    """``"TAR@FAR=1e-2 97.33 (FAR 0.008)"``, or when the target FAR was not reached
    ``"TAR@FAR=1e-2 not reached (FAR reached 1.000, TAR there 100.00)"``."""
    label = f"TAR@FAR={key.rsplit('_', 1)[-1]}"
    tar, far = 100 * result[key], result.get(f"{key}_far", float("nan"))
    if result.get(f"{key}_reached", True):
        return f"{label} {tar:.2f} (FAR {far:.3f})"
    return f"{label} not reached (FAR reached {far:.3f}, TAR there {tar:.2f})"


def verify_weights(weights_path: str | Path, bin_path: str | Path, batch_size: int = 64,
                   roc_png: str | Path | None = None, device: str = "cpu") -> dict:
    """``detkd eval verification --weights W --bin FILE.bin``: the ``verify_bin`` result of a model file
    (prints nothing; ``summary`` / ``describe`` format it)."""
    model = load_face_model(weights_path).to(device)
    return verify_bin(model, bin_path, batch_size=batch_size, roc_png=roc_png)


def describe(result: dict, bin_name: str = "") -> str:
    """One human-readable line of a verification result."""
    return (f"{bin_name + ': ' if bin_name else ''}accuracy-flip {100 * result['acc']:.2f} ± "
            f"{100 * result['acc_std']:.2f} over {result['num_pairs']} pairs; " +
            ", ".join(format_tar(result, k) for k in FAR_TARGETS))


__all__ = [
    "accuracy_folds", "describe", "embed_images", "evaluate_pairs", "far_reached", "fold_bounds", "format_tar",
    "load_face_model", "pair_distances", "save_roc_png", "slinear_interp", "summary", "tar_at_far", "verify_bin", "verify_weights",
]
