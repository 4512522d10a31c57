"""Semi-hard triplet mining for triplet distillation (METHODS.md §5.5.3, §5.8).

The reference mines once per "bag" of 7,200 images (identities with ≤ 18 images each) with the current
student in inference mode, then trains on chunks of 60 triplets. Here a bag is one training batch: the
loader draws ``P`` identities through :class:`IdentityGroups` (one item = up to ``imgs_per_id`` images of one
identity), the task embeds the whole bag with the current student in eval mode, mines, and trains on up to
``triplets_per_batch`` of the mined triplets in the same step (so the miner is never stale).

Shapes: ``emb [N, D]`` L2-normalised bag embeddings, ``labels [N]``; triplets are index rows ``[T, 3]``
(anchor, positive, negative) into the bag. Distances are squared L2 (``2 − 2·cos`` for unit vectors).
"""
from __future__ import annotations

import warnings
from collections import defaultdict

import torch
from torch import Tensor
from torch.utils.data import Dataset


def mine_triplets(emb: Tensor, labels: Tensor, alpha: float = 0.35, generator: torch.Generator | None = None) -> Tensor:
    """FaceNet semi-hard selection: for every anchor/positive pair ``a < p`` of an identity, a random negative
    ``n`` of another identity with ``d(a,p) < d(a,n)`` and ``d(a,n) − d(a,p) < alpha``. Pairs with no such
    negative are skipped; identities with one image give no pair and are skipped with a warning.

    ``emb [N, D]`` normalised, ``labels [N]``; returns int64 ``[T, 3]`` in identity order (shuffle it).
    """
    if emb.shape[0] != labels.shape[0]:
        raise ValueError(f"emb has {emb.shape[0]} rows but labels has {labels.shape[0]}")
    dist = (emb[:, None, :] - emb[None, :, :]).pow(2).sum(-1)  # [N, N]
    rows, singles = [], []
    for ident in labels.unique().tolist():
        members = (labels == ident).nonzero().flatten()
        if members.numel() < 2:
            singles.append(ident)
            continue
        pairs = torch.combinations(members, 2)  # [P, 2] (a < p)
        a, p = pairs[:, 0], pairs[:, 1]
        d_ap = dist[a, p][:, None]  # [P, 1]
        d_an = dist[a]  # [P, N]
        ok = (labels[None, :] != ident) & (d_an > d_ap) & (d_an - d_ap < alpha)  # [P, N]
        has = ok.any(1)
        if not has.any():
            continue
        score = torch.rand(ok.shape, generator=generator, device=ok.device).masked_fill(~ok, -1.0)
        n = score.argmax(1)  # a uniformly random valid negative per pair
        rows.append(torch.stack([a[has], p[has], n[has]], 1))
    if singles:
        warnings.warn(
            f"triplet mining: {len(singles)} identit{'y' if len(singles) == 1 else 'ies'} with a single image "
            f"skipped (no anchor/positive pair), e.g. label {singles[0]}",
            stacklevel=2,
        )
    if not rows:
        return torch.zeros(0, 3, dtype=torch.long, device=emb.device)
    return torch.cat(rows)


class IdentityGroups(Dataset):
    """Item ``i`` = up to ``imgs_per_id`` images of identity ``i`` (random subset, fixed by seed/epoch/index).

    ``base[j]`` must return ``(image, label, ...)``; the group returns the stacked
    ``(images [n, 3, H, W], labels [n], *rest stacked)``. Identities with a single image are skipped with a
    warning (they cannot form an anchor/positive pair). Batch with :func:`collate_groups`.
    """

    def __init__(self, base: Dataset, labels: list[int] | Tensor, imgs_per_id: int = 18, seed: int = 0):
        if imgs_per_id < 2:
            raise ValueError(f"imgs_per_id must be ≥ 2 to form anchor/positive pairs, got {imgs_per_id}")
        self.base, self.imgs_per_id, self.seed, self.epoch = base, imgs_per_id, seed, 0
        by_id: dict[int, list[int]] = defaultdict(list)
        for j, y in enumerate(torch.as_tensor(labels).tolist()):
            by_id[y].append(j)
        singles = [y for y, idx in by_id.items() if len(idx) < 2]
        if singles:
            warnings.warn(
                f"IdentityGroups: {len(singles)} identit{'y' if len(singles) == 1 else 'ies'} with a single image "
                f"skipped for triplet mining, e.g. label {singles[0]}",
                stacklevel=2,
            )
        self.groups = [idx for y, idx in sorted(by_id.items()) if len(idx) >= 2]
        if not self.groups:
            raise ValueError("IdentityGroups: no identity has two or more images")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int):
        idx = self.groups[i]
        if len(idx) > self.imgs_per_id:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + i)
            pick = torch.randperm(len(idx), generator=g)[: self.imgs_per_id].sort().values.tolist()
            idx = [idx[k] for k in pick]
        items = [self.base[j] for j in idx]
        return tuple(torch.stack([torch.as_tensor(it[f]) for it in items]) for f in range(len(items[0])))


def collate_groups(groups: list[tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
    """Concatenate identity groups into one bag: ``(images [N, 3, H, W], labels [N], ...)``."""
    return tuple(torch.cat([g[f] for g in groups]) for f in range(len(groups[0])))
