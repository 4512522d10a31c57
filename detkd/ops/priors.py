"""RetinaFace / SSD-style square priors (METHODS.md §1.4, EVAL.md §4.3), in input pixels.

For level k with stride ``s_k`` the feature map is ``ceil(H / s_k) x ceil(W / s_k)`` and each location
(row i, column j) carries one square prior per min size m, in this order: rows (outer), columns, sizes
(inner). A prior is ``(cx, cy, w, h) = ((j + 0.5) s_k, (i + 0.5) s_k, m, m)`` in pixels; the reference divides
by (W, H) and multiplies back at decode time, which is the same geometry. The order matches a head output
``[B, A*k, h, w]`` permuted to ``[B, h, w, A*k]`` and viewed as ``[B, h*w*A, k]``.

640 x 640 with min sizes [[16,32],[64,128],[256,512]] and steps [8,16,32] gives 12800 + 3200 + 800 = 16800 priors.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_convert


def feature_sizes(height: int, width: int, steps) -> list[tuple[int, int]]:
    """``(ceil(H / s), ceil(W / s))`` per level."""
    return [(math.ceil(height / s), math.ceil(width / s)) for s in steps]


def level_priors(fh: int, fw: int, step: int, min_sizes, device=None, dtype=torch.float32) -> Tensor:
    """Priors of one level ``[fh * fw * A, 4]`` (cx, cy, w, h) in pixels, A = len(min_sizes)."""
    ys = (torch.arange(fh, device=device, dtype=dtype) + 0.5) * step  # [fh]
    xs = (torch.arange(fw, device=device, dtype=dtype) + 0.5) * step  # [fw]
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")  # [fh, fw]
    sizes = torch.as_tensor(list(min_sizes), device=device, dtype=dtype)  # [A]
    a = len(sizes)
    centres = torch.stack([cx, cy], dim=-1)[:, :, None, :].expand(fh, fw, a, 2)  # [fh, fw, A, 2]
    wh = sizes[None, None, :, None].expand(fh, fw, a, 2)  # [fh, fw, A, 2]
    return torch.cat([centres, wh], dim=-1).reshape(-1, 4)


def make_priors(height: int, width: int, min_sizes, steps, device=None, dtype=torch.float32) -> list[Tensor]:
    """Per-level priors for an input of ``height x width`` pixels (list of ``[h*w*A_k, 4]``)."""
    return [
        level_priors(fh, fw, step, sizes, device, dtype)
        for (fh, fw), step, sizes in zip(feature_sizes(height, width, steps), steps, min_sizes)
    ]


class PriorCache:
    """Memoises ``make_priors`` per (H, W, device, dtype); priors are never modified in place by callers.

    ``cache(h, w)`` gives the (cx, cy, w, h) priors the coders use; ``cache.xyxy(h, w)`` the same priors as
    xyxy (what ``DetOutput.priors`` reports), and ``cache.cxcywh_of(xyxy_list)`` maps a list it handed out back
    to the cached (cx, cy, w, h) tensors, so encoding and decoding use the original numbers.
    """

    def __init__(self, min_sizes, steps, max_entries: int = 32):
        self.min_sizes = [list(m) for m in min_sizes]
        self.steps = list(steps)
        self.max_entries = max_entries
        self._cache: dict[tuple, list[Tensor]] = {}
        self._xyxy: dict[tuple, list[Tensor]] = {}

    def __call__(self, height: int, width: int, device=None, dtype=torch.float32) -> list[Tensor]:
        key = (int(height), int(width), str(device), dtype)
        hit = self._cache.get(key)
        if hit is None:
            if len(self._cache) >= self.max_entries:  # evict the oldest (many image sizes at test time)
                old = next(iter(self._cache))
                self._cache.pop(old)
                self._xyxy.pop(old, None)
            hit = make_priors(height, width, self.min_sizes, self.steps, device, dtype)
            self._cache[key] = hit
        return hit

    def xyxy(self, height: int, width: int, device=None, dtype=torch.float32) -> list[Tensor]:
        """The priors of ``__call__`` as ``[h*w*A_k, 4]`` xyxy per level (cached as well)."""
        cxcywh = self(height, width, device, dtype)
        key = (int(height), int(width), str(device), dtype)
        hit = self._xyxy.get(key)
        if hit is None:
            hit = [box_convert(p, "cxcywh", "xyxy") for p in cxcywh]
            self._xyxy[key] = hit
        return hit

    def cxcywh_of(self, priors_xyxy: list[Tensor]) -> list[Tensor]:
        """The cached (cx, cy, w, h) priors of a list returned by ``xyxy`` (converted when not found)."""
        for key, xyxy in self._xyxy.items():
            if len(xyxy) == len(priors_xyxy) and all(a is b for a, b in zip(xyxy, priors_xyxy)):
                return self._cache[key]
        return [box_convert(p, "xyxy", "cxcywh") for p in priors_xyxy]
