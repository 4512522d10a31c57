"""The one-stage (dense) detector skeleton that RetinaFace, RetinaNet and GFL share.

One forward pass, always the same ``DetOutput`` (docs/contracts.md)::

    images [B, 3, H, W] RGB 0..255 (padded)
      -> preprocess(images)              the model's own normalisation (mean/std buffers, colour order)
      -> features(x)                     backbone + neck: {level: [B, C, H_l, W_l]} for every name in ``levels``
      -> head_forward(feats)             ({key: per level [B, H_l*W_l*A, k]}, {tap: [B, C, H_l, W_l]} tower taps)
      -> make_priors(H, W, device)       per level [H_l*W_l*A, 4], xyxy input pixels (``PRIOR_FORMAT``)
      -> assign(out, targets)            Assignment (iff targets)
      -> loss(out, targets)              unweighted task terms -> ``raw_losses`` (iff targets)
      -> weight_losses(raw)              weighted, prefixed terms -> ``losses``; the training objective is their sum
      -> postprocess(out, **thresholds)  per-image detections (iff decode=True)

A family subclasses ``DenseDetector`` and implements

* ``features(x)``           unless the default ``self.neck(self.backbone(x))`` (both returning dicts) fits;
* ``head_forward(feats)``   raw head outputs in the prior order of ``make_priors`` (row-major (y, x), then anchor;
                            ``flatten_level`` does the permute/reshape), plus the tower taps it exposes;
* ``make_priors(h, w, device)``  anchors / points of an ``h x w`` padded input, xyxy pixels;
* ``assign(out, targets)``  its assigner (IoU max-matcher, ATSS, RetinaFace's matcher ...; ``detkd.ops.assign``);
* ``loss(out, targets)``    reads ``out.assign``, returns the unweighted terms ``{"cls": .., "loc": ..}``;
* ``weight_losses(raw)``    the default prefixes ``task.`` and multiplies by ``self.loss_weights`` (missing = 1);
* ``decode(out, **thresholds)``  the detections; ``postprocess`` fills the defaults from ``self.thresholds``.

and declares, in ``__init__``, ``levels`` (names of the neck outputs), ``channels`` and ``strides`` (tap name ->
channels / stride, no dummy forward), ``head_spec`` (head key -> ``HeadKey``) and ``thresholds`` (the default
keyword arguments of ``decode``). Constructors take their parts torchvision-style: ``backbone=None`` (and
``neck=None``, ``head=None``, ...) builds the family's default.

``image_sizes`` (one ``(h, w)`` per image: the valid area inside the padded batch) default to the full padded
size; they travel in ``DetOutput.image_sizes`` to the assigner, the masks and the decoder.
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import torch
from torch import Tensor, nn

from detkd.structures import Assignment, DetOutput, HeadKey


def flatten_level(x: Tensor, k: int) -> Tensor:
    """A conv head output ``[B, A*k, H, W]`` as ``[B, H*W*A, k]`` (row-major (y, x), then anchor)."""
    b = x.shape[0]
    return x.permute(0, 2, 3, 1).reshape(b, -1, k)


def check_image_sizes(images: Tensor, image_sizes: Sequence[Sequence[int]] | None) -> list[tuple[int, int]]:
    """``image_sizes`` as a list of ``(h, w)`` ints, one per image, inside the padded size (default: the full size)."""
    b, _, h, w = images.shape
    if image_sizes is None:
        return [(int(h), int(w))] * b
    sizes = [(int(s[0]), int(s[1])) for s in image_sizes]
    if len(sizes) != b:
        raise ValueError(f"{len(sizes)} image_sizes for a batch of {b} images")
    for i, (ih, iw) in enumerate(sizes):
        if not (0 < ih <= h and 0 < iw <= w):
            raise ValueError(f"image_sizes[{i}] = {(ih, iw)} is not inside the padded input {h}x{w}")
    return sizes


class DenseDetector(nn.Module):
    """Base class of one-stage detectors: ``forward`` runs the stages listed in the module docstring."""

    levels: tuple[str, ...] = ()
    channels: dict[str, int]
    strides: dict[str, int]
    head_spec: dict[str, HeadKey]
    thresholds: dict[str, float | int | None]
    loss_weights: dict[str, float]

    def __init__(self):
        super().__init__()
        self.channels, self.strides, self.head_spec = {}, {}, {}
        self.thresholds, self.loss_weights = {}, {}

    # ------------------------------------------------------------------------------ the family's stages

    def preprocess(self, images: Tensor) -> Tensor:
        """Normalise RGB 0..255 input with the model's ``pixel_mean`` / ``pixel_std`` buffers (where present)."""
        x = images
        if hasattr(self, "pixel_mean"):
            x = x - self.pixel_mean.to(x.dtype)
        if hasattr(self, "pixel_std"):
            x = x / self.pixel_std.to(x.dtype)
        return x

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Backbone + neck: ``{level: [B, C, H_l, W_l]}`` for every name in ``self.levels``."""
        return self.neck(self.backbone(x))

    def head_forward(self, feats: dict[str, Tensor]) -> tuple[dict[str, list[Tensor]], dict[str, Tensor]]:
        raise NotImplementedError

    def make_priors(self, height: int, width: int, device: torch.device) -> list[Tensor]:
        raise NotImplementedError

    def assign(self, out: DetOutput, targets: list[dict]) -> Assignment:
        raise NotImplementedError

    def loss(self, out: DetOutput, targets: list[dict]) -> dict[str, Tensor]:
        raise NotImplementedError

    def decode(self, out: DetOutput, **thresholds) -> list[dict[str, Tensor]]:
        raise NotImplementedError

    def weight_losses(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        """``task.<name> = loss_weights.get(name, 1) * raw[name]`` (keeps the order of ``raw``)."""
        return {f"task.{k}": (self.loss_weights[k] * v if k in self.loss_weights else v) for k, v in raw.items()}

    # ------------------------------------------------------------------------------------------ public

    def postprocess(self, out: DetOutput, **thresholds) -> list[dict[str, Tensor]]:
        """Detections per image; keyword thresholds override ``self.thresholds`` (``None`` = the default).

        Each dict: ``boxes [N, 4]`` xyxy input pixels, ``scores [N]``, ``labels [N]`` (1-based), plus family
        extras (``landmarks [N, 5, 2]``), rows in descending score order.
        """
        unknown = set(thresholds) - set(self.thresholds)
        if unknown:
            raise TypeError(f"{type(self).__name__}.postprocess: unknown thresholds {sorted(unknown)} "
                            f"(known: {', '.join(self.thresholds)})")
        merged = {k: (thresholds[k] if thresholds.get(k) is not None else v) for k, v in self.thresholds.items()}
        with torch.no_grad():
            return self.decode(out, **merged)

    def skippable(self, taps: Iterable[str]) -> tuple[str, ...]:
        """Optional parts of the forward that ``taps`` (feature / head taps a caller reads) do not need:
        ``"head"`` (the head and its tower taps) when every tap is a neck level."""
        return ("head",) if set(taps) <= set(self.levels) else ()

    def forward(self, images: Tensor, targets: list[dict] | None = None, decode: bool = False,
                image_sizes: Sequence[Sequence[int]] | None = None, skip: Collection[str] = ()) -> DetOutput:
        """``images float [B, 3, H, W]`` RGB 0..255 -> ``DetOutput`` (same type in train and eval mode).

        ``skip=("head",)`` (no targets, no decode) returns the neck levels and the priors only: ``head`` is
        empty (a frozen teacher whose distillation reads only neck taps)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} expects RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
        unknown = set(skip) - {"head"}
        if unknown:
            raise ValueError(f"{type(self).__name__}.forward: unknown skip parts {sorted(unknown)} (known: head)")
        if skip and (targets is not None or decode):
            raise ValueError(f"{type(self).__name__}.forward: skip='head' is for a forward without targets and "
                             "without decode")
        sizes = check_image_sizes(images, image_sizes)
        feats = self.features(self.preprocess(images))
        missing = [lvl for lvl in self.levels if lvl not in feats]
        if missing:
            raise RuntimeError(f"{type(self).__name__}.features returned {sorted(feats)}, missing levels {missing}")
        h, w = images.shape[-2:]
        priors = self.make_priors(h, w, images.device)
        if skip:
            return DetOutput(feats={lvl: feats[lvl] for lvl in self.levels}, priors=priors, image_sizes=sizes)
        head, taps = self.head_forward(feats)
        first = next(iter(self.head_spec))
        for lvl, p, t in zip(self.levels, priors, head[first]):
            if p.shape[0] != t.shape[1]:
                raise RuntimeError(f"level {lvl}: {t.shape[1]} head outputs but {p.shape[0]} priors for {h}x{w}")
        out = DetOutput(feats={**feats, **taps}, head=head, priors=priors, image_sizes=sizes)
        if targets is not None:
            if len(targets) != images.shape[0]:
                raise ValueError(f"{len(targets)} targets for a batch of {images.shape[0]} images")
            out.assign = self.assign(out, targets)
            out.raw_losses = self.loss(out, targets)
            out.losses = self.weight_losses(out.raw_losses)
        if decode:
            out.dets = self.postprocess(out)
        return out
