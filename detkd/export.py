"""ONNX export of detkd models, with an ONNX Runtime parity check (``detkd export RUN_OR_WEIGHTS --onnx F``).

The graph
* input ``images``: ``[B, 3, H, W]`` RGB in 0..255, NCHW, dtype ``float32`` (default) or ``uint8``
  (``input_dtype``); the graph casts to float and applies the model's own normalisation (RetinaFace: BGR minus
  (104, 117, 123); face recognizers: (x - 127.5) / 128), so callers feed plain pixels.
* BatchNorm is folded first (``detkd.models.fuse``); ONNX Runtime fuses conv + activation itself.
* ``H, W`` are fixed to ``size`` unless ``dynamic_size`` (the batch axis is always dynamic, except with NMS).
* outputs, per family (``EXPORTERS``):
  - any ``DenseDetector`` (raw): ``<head key>.<level>`` (RetinaFace: ``cls_logits.p3`` ... ``landmarks.p5``),
    each ``[B, h*w*A, k]`` exactly as ``DetOutput.head[key][level]`` (the skeleton's ``preprocess`` ->
    ``features`` -> ``head_forward``); the runner builds priors and decodes with the model's own code.
  - RetinaFace ``with_nms``: batch 1, ``boxes [N, 4]`` xyxy, ``scores [N]``, ``landmarks [N, 5, 2]`` in input
    pixels, descending score: softmax, score > conf, top-k in the reference order (ties: higher prior index
    first), SSD decoding, "+1" NMS (ONNX NonMaxSuppression on boxes with x2, y2 shifted by +1, visiting the
    candidates in that order), keep-top-k. The protocol preset is baked in and recorded in the card.
  - RetinaNet / GFL ``with_nms``: batch 1, a second input ``image_size int64 [2]`` (valid h, w), outputs
    ``boxes [N, 4]``, ``scores [N]``, ``labels int64 [N]``: the model's own ``decode`` traced, priors built in
    the graph, thresholds of a ``detkd.infer_detector`` protocol (default ``torchvision``) baked in.
  - Faster R-CNN: the same inputs / outputs, the whole eval pipeline (``detkd.export_rcnn``).
  - face recognizers: ``embedding [B, D]`` (raw, not L2-normalised).

The card ``F.onnx.json`` beside ``F.onnx`` (``onnx_card_path``; ``format: detkd-onnx/1``; a different name
from the weights' ``F.json``, so exporting ``F.safetensors`` to ``F.onnx`` keeps both cards) holds the model config under ``model`` as in
a ``detkd-model/2`` card (so the runner can rebuild priors / post-processing), the graph description (input
dtype, fixed or dynamic size, outputs, protocol), the source weights, the ONNX file's md5 (the runner refuses an ONNX file its card does not
describe) and the parity numbers measured at export time.

Families plug in with ``@register_exporter(ModelClass)``: a function ``(model, opts) -> GraphSpec``.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from detkd.models.fuse import fuse_model

ONNX_CARD_FORMAT = "detkd-onnx/1"
INPUT_DTYPES = ("float32", "uint8")


def onnx_card_path(onnx_path) -> Path:
    """The card of an exported graph: ``student.onnx`` -> ``student.onnx.json``."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


class ExportError(ValueError):
    """An export that cannot be done (missing card, unsupported architecture, bad option); one-line reason."""


@dataclass
class ExportOptions:
    opset: int = 17
    dynamic_size: bool = False
    size: tuple[int, int] = (640, 640)  # (H, W) traced, and fixed unless dynamic_size (detectors only)
    with_nms: bool = False
    protocol: str | None = None  # post-processing baked in with with_nms (None: RetinaFace "biubug6-origin",
    # generic detectors "torchvision", a detkd.infer_detector protocol)
    input_dtype: str = "float32"
    check: bool = True  # run the export in ONNX Runtime and compare with eager


@dataclass
class GraphSpec:
    """What a family hook returns: the module to trace and how its graph is described."""

    module: nn.Module  # forward(images) -> tuple of tensors
    example: Tensor | tuple[Tensor, ...]  # traced input(s): images (dtype = the graph input dtype), extra inputs
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    card: dict = field(default_factory=dict)  # family entries for the card's "graph" section


EXPORTERS: dict[type, Callable[[nn.Module, ExportOptions], GraphSpec]] = {}


def register_exporter(cls: type):
    """Decorator: ``@register_exporter(RetinaFace) def hook(model, opts) -> GraphSpec``."""

    def wrap(fn):
        EXPORTERS[cls] = fn
        return fn

    return wrap


def find_exporter(model: nn.Module) -> Callable[[nn.Module, ExportOptions], GraphSpec]:
    for cls in type(model).__mro__:
        if cls in EXPORTERS:
            return EXPORTERS[cls]
    known = ", ".join(sorted(c.__name__ for c in EXPORTERS))
    raise ExportError(f"{type(model).__name__} is not exportable to ONNX yet (exportable: {known})")


def _example(shape, dtype: str, seed: int = 0) -> Tensor:
    """A deterministic random image batch in 0..255 of the graph input dtype."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return x if dtype == "uint8" else x.float()


# ------------------------------------------------------------------------------------- dense detectors


class _DenseRaw(nn.Module):
    """Any ``DenseDetector``: preprocess -> features -> head_forward; outputs ``<key>.<level>`` per head key."""

    def __init__(self, model: nn.Module, keys: list[str]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        head, _ = m.head_forward(m.features(m.preprocess(images.float())))
        return tuple(t for key in self.keys for t in head[key])


class _RetinaFaceNMS(nn.Module):
    """Batch-1 RetinaFace detection graph: decode + "+1" NMS of one protocol (see the module docstring)."""

    def __init__(self, model: nn.Module, protocol):
        super().__init__()
        self.model, self.p = model, protocol
        cfg = model.config
        self.level_cfg = list(zip(cfg.steps, cfg.min_sizes))
        self.variance = tuple(cfg.variance)

    def _priors(self, feats: list[Tensor]) -> Tensor:
        """cxcywh priors ``[P, 4]`` from the feature map sizes (dynamic in the graph), order as the heads."""
        out = []
        for f, (step, sizes) in zip(feats, self.level_cfg):
            ys = (torch.arange(f.shape[2], dtype=torch.float32) + 0.5) * step  # [h]
            xs = (torch.arange(f.shape[3], dtype=torch.float32) + 0.5) * step  # [w]
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            a = len(sizes)
            centres = torch.stack([cx, cy], dim=-1).reshape(-1, 1, 2).expand(-1, a, 2)  # [h*w, A, 2]
            wh = torch.tensor(sizes, dtype=torch.float32).reshape(1, a, 1).expand_as(centres)  # [h*w, A, 2]
            out.append(torch.cat([centres, wh], dim=-1).reshape(-1, 4))
        return torch.cat(out)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = self.model
        feats = m.features(m.preprocess(images.float()))
        head, _ = m.head_forward(feats)
        p, (v0, v1) = self.p, self.variance
        priors = self._priors([feats[k] for k in m.levels])  # [P, 4]
        scores = torch.softmax(torch.cat(head["cls_logits"], 1)[0], dim=-1)[:, 1]  # [P]
        idx = (scores > p.conf_thresh).nonzero().squeeze(1)  # [n] ascending prior index
        # reference order: descending score, ties by higher index first = descending sort of the reversed list
        # with ties by lower index first (ONNX TopK's documented tie rule; argsort exports as TopK)
        rev = torch.argsort(scores[idx].flip(0), descending=True)
        order = idx.shape[0] - 1 - rev
        if p.top_k is not None:
            order = order[: p.top_k]
        idx = idx[order]
        scores, pri = scores[idx], priors[idx]
        loc = torch.cat(head["box_reg"], 1)[0][idx]  # [n, 4]
        c = pri[:, :2] + loc[:, :2] * v0 * pri[:, 2:]
        wh = pri[:, 2:] * torch.exp(loc[:, 2:] * v1)
        x1y1 = c - wh / 2
        boxes = torch.cat([x1y1, x1y1 + wh], dim=1)  # [n, 4] xyxy
        plus1 = torch.cat([boxes[:, :2], boxes[:, 2:] + 1.0], dim=1)
        rank = torch.arange(idx.shape[0], 0, -1).to(torch.float32)  # visit in the order above
        from torchvision.ops import nms

        keep = nms(plus1, rank, p.nms_thresh)
        if p.keep_top_k is not None:
            keep = keep[: p.keep_top_k]
        lm = torch.cat(head["landmarks"], 1)[0][idx[keep]].reshape(-1, 5, 2)
        pk = pri[keep]
        landmarks = pk[:, None, :2] + lm * v0 * pk[:, None, 2:]
        return boxes[keep], scores[keep], landmarks


class _DenseNMS(nn.Module):
    """Batch-1 detection graph of a generic dense detector (RetinaNet, GFL): the model's own ``decode`` traced.

    Inputs ``images [1, 3, H, W]`` (padded) and ``image_size int64 [2]`` (the valid ``(h, w)`` boxes are clipped
    to, ``DetOutput.image_sizes``); priors are built in the graph from the feature map sizes, so ``H, W`` may be
    dynamic. Outputs ``boxes [N, 4]`` xyxy, ``scores [N]``, ``labels int64 [N]`` (1-based), descending score.
    """

    def __init__(self, model: nn.Module, thresholds: dict):
        super().__init__()
        self.model, self.thresholds = model, thresholds

    def _priors(self, feats: list[Tensor], images: Tensor) -> list[Tensor]:
        from detkd.models.gfl import GFL, square_priors
        from detkd.models.resnet_fpn import STRIDES

        m = self.model
        if isinstance(m, GFL):
            return [square_priors(f.shape[2], f.shape[3], s, m.config.octave_base_scale * s)
                    for f, s in zip(feats, STRIDES)]
        # RetinaNet: torchvision's anchors, stride = padded size // grid size (as make_priors)
        gen = m.anchor_generator
        gen.set_cell_anchors(torch.float32, torch.device("cpu"))
        grids = [[f.shape[2], f.shape[3]] for f in feats]
        strides = [[torch.div(torch.tensor(images.shape[2]), g[0], rounding_mode="floor"),
                    torch.div(torch.tensor(images.shape[3]), g[1], rounding_mode="floor")] for g in grids]
        return gen.grid_anchors(grids, strides)

    def forward(self, images: Tensor, image_size: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        from detkd.structures import DetOutput

        m = self.model
        feats = m.features(m.preprocess(images.float()))
        head, _ = m.head_forward(feats)
        priors = self._priors([feats[k] for k in m.levels], images)
        out = DetOutput(head=head, priors=priors, image_sizes=[(image_size[0], image_size[1])])
        d = m.decode(out, **self.thresholds)[0]
        return d["boxes"], d["scores"], d["labels"]


def _generic_nms_spec(model: nn.Module, opts: ExportOptions) -> GraphSpec:
    """``--with-nms`` for RetinaNet / GFL: the thresholds of a detector protocol (``infer_detector``) baked in."""
    from detkd.models.gfl import GFL
    from detkd.models.retinanet import RetinaNet

    if not isinstance(model, (RetinaNet, GFL)):
        raise ExportError(f"--with-nms is not available for {type(model).__name__} yet; export its raw heads "
                          "(without --with-nms) and decode with `detkd detect --backend onnxruntime`")
    return detector_nms_graph(model, opts, _DenseNMS)


def detector_nms_graph(model: nn.Module, opts: ExportOptions, graph_cls) -> GraphSpec:
    """One-image ``boxes, scores, labels`` graph of an object detector, with the thresholds of the detector
    protocol ``opts.protocol`` (default ``torchvision``) baked in; ``graph_cls(model, thresholds)`` is the module
    traced on ``(images, image_size)``."""
    from detkd.infer_detector import DET_PROTOCOLS, get_det_protocol

    name = opts.protocol or "torchvision"
    if name not in DET_PROTOCOLS:
        raise ExportError(f"--protocol {name!r} is not a detector protocol (known: {', '.join(DET_PROTOCOLS)})")
    proto = get_det_protocol(name)
    thresholds = dict(model.thresholds) | {k: v for k, v in (proto.thresholds or {}).items() if v is not None}
    unknown = set(thresholds) - set(model.thresholds)
    if unknown:
        raise ExportError(f"protocol {name!r} sets thresholds {sorted(unknown)} that {type(model).__name__} "
                          f"does not have (known: {', '.join(model.thresholds)})")
    if thresholds.get("nms", "greedy") != "greedy":
        raise ExportError(f"NMS preset {thresholds['nms']!r} has no ONNX graph (only 'greedy'); export raw heads")
    h, w = opts.size
    names = ["boxes", "scores", "labels"]
    axes = {n: {0: "num_dets"} for n in names}
    if opts.dynamic_size:
        axes["images"] = {2: "height", 3: "width"}
    example = (_example((1, 3, h, w), opts.input_dtype), torch.tensor([h, w], dtype=torch.int64))
    graph = {"kind": "detector", "head": None, "with_nms": True, "batch": 1, "extra_inputs": ["image_size"],
             "protocol": {"name": name, "thresholds": thresholds}}
    return GraphSpec(graph_cls(model, thresholds), example, names, axes, graph)


def _dense_hook(model: nn.Module, opts: ExportOptions) -> GraphSpec:
    """Raw heads of any ``DenseDetector``; ``with_nms`` for the families that have an NMS graph (RetinaFace)."""
    h, w = opts.size
    if opts.with_nms:
        from detkd.infer import get_protocol
        from detkd.models.retinaface import RetinaFace

        if not isinstance(model, RetinaFace):
            return _generic_nms_spec(model, opts)
        proto = get_protocol(opts.protocol or "biubug6-origin")
        names = ["boxes", "scores", "landmarks"]
        axes = {n: {0: "num_dets"} for n in names}
        if opts.dynamic_size:
            axes["images"] = {2: "height", 3: "width"}
        graph = {"kind": "detector", "head": None, "with_nms": True, "batch": 1,
                 "protocol": dataclasses.asdict(proto)}
        return GraphSpec(_RetinaFaceNMS(model, proto), _example((1, 3, h, w), opts.input_dtype), names, axes, graph)
    keys, levels = list(model.head_spec), list(model.levels)
    names = [f"{k}.{lvl}" for k in keys for lvl in levels]
    axes = {"images": {0: "batch"}} | {n: {0: "batch"} for n in names}
    if opts.dynamic_size:
        axes["images"] |= {2: "height", 3: "width"}
        for n in names:
            axes[n][1] = f"priors_{n.rsplit('.', 1)[1]}"
    graph = {"kind": "detector", "head": {"keys": keys, "levels": levels}, "with_nms": False,
             "batch": "dynamic", "protocol": None}
    return GraphSpec(_DenseRaw(model, keys), _example((1, 3, h, w), opts.input_dtype), names, axes, graph)


class _Embedder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images.float()).embedding


def _facerec_hook(model: nn.Module, opts: ExportOptions) -> GraphSpec:
    if opts.with_nms:
        raise ExportError("--with-nms applies to detectors only, not to face recognizers")
    s = model.input_size
    graph = {"kind": "face_recognizer", "head": None, "with_nms": False, "batch": "dynamic", "protocol": None}
    # face crops are aligned to a fixed size: the size is the model's, never dynamic
    return GraphSpec(_Embedder(model), _example((2, 3, s, s), opts.input_dtype), ["embedding"],
                     {"images": {0: "batch"}, "embedding": {0: "batch"}}, graph)


def _register_builtin() -> None:
    from detkd.models.dense import DenseDetector
    from detkd.models.facerec import FaceRecognizer

    from detkd.export_rcnn import faster_rcnn_hook
    from detkd.models.faster_rcnn import FasterRCNN

    EXPORTERS.setdefault(DenseDetector, _dense_hook)
    EXPORTERS.setdefault(FasterRCNN, faster_rcnn_hook)
    EXPORTERS.setdefault(FaceRecognizer, _facerec_hook)


# ---------------------------------------------------------------------------------------------- export


def load_source(src) -> tuple[nn.Module, dict, Path]:
    """``(model, weights card, weights file)`` from an exported model file or a run dir / training checkpoint."""
    from detkd.models.weights import load_model_file

    src = Path(src)
    if src.suffix == ".safetensors" or (src.is_file() and src.with_suffix(".json").is_file()
                                        and src.suffix != ".pt"):
        if not src.with_suffix(".json").is_file():
            raise ExportError(f"{src}: model card {src.with_suffix('.json').name} is missing; it says which "
                              "architecture the weights belong to, so the model cannot be rebuilt without it")
        model, card = load_model_file(src)
        return model, card, src
    from detkd.engine.checkpoint import export_student

    with tempfile.TemporaryDirectory(prefix="detkd_export_") as tmp:  # the run's student, read back at once
        model, card = load_model_file(export_student(src, Path(tmp) / "student.safetensors"))
    return model, card, src


def _check_options(opts: ExportOptions) -> None:
    if opts.input_dtype not in INPUT_DTYPES:
        raise ExportError(f"input dtype must be one of {INPUT_DTYPES}, got {opts.input_dtype!r}")
    if not 11 <= opts.opset <= 21:
        raise ExportError(f"opset {opts.opset} is not supported (11..21; NonMaxSuppression needs >= 11)")
    h, w = opts.size
    if h < 32 or w < 32:
        raise ExportError(f"trace size {h}x{w} is too small (at least 32x32)")


def export_onnx(src, out, opts: ExportOptions | None = None) -> dict:
    """Export ``src`` (model file or run) to ``out`` (.onnx) + its ``.onnx.json`` card; returns the card."""
    from detkd.models.weights import md5sum

    opts = opts or ExportOptions()
    _check_options(opts)
    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"{out}: the ONNX output must end in .onnx")
    model, wcard, wpath = load_source(src)
    # the weights card's provenance (e.g. an import's source format) plus where the weights file is
    source = dict(wcard.get("source") or {}) | {
        "weights": str(Path(wpath).resolve()), "weights_md5": md5sum(wpath) if Path(wpath).is_file() else None}
    extra = {"class_names": wcard["class_names"]} if wcard.get("class_names") else {}
    return export_model(model, out, opts, source=source, config=wcard.get("model"), extra=extra)


def export_model(model: nn.Module, out, opts: ExportOptions, source: dict | None = None,
                 config: dict | None = None, extra: dict | None = None) -> dict:
    """Export an in-memory model (see ``export_onnx``); ``config`` = the builder config dict for the card
    (default: ``dataclasses.asdict(model.config)``); ``extra``: more card entries (e.g. ``class_names``)."""
    from detkd.models.weights import md5sum

    _register_builtin()
    _check_options(opts)
    if config is None and not dataclasses.is_dataclass(getattr(model, "config", None)):
        raise ExportError(f"{type(model).__name__} has no config dataclass and none was given: the card "
                          "could not rebuild it")
    cfg = dict(config) if config is not None else dataclasses.asdict(model.config)
    if "name" not in cfg:
        raise ExportError(f"model config has no 'name' (keys: {sorted(cfg)}): the card could not rebuild it")
    hook = find_exporter(model)
    fused = fuse_model(model)
    spec = hook(fused, opts)
    spec.module.eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python ints from shapes (handled by design)
        torch.onnx.export(spec.module, _inputs(spec), str(out), dynamo=False, opset_version=opts.opset,
                          input_names=["images", *spec.card.get("extra_inputs", [])], output_names=spec.output_names,
                          dynamic_axes=spec.dynamic_axes, do_constant_folding=True)
    h, w = opts.size
    if spec.card["kind"] == "face_recognizer":
        h = w = model.input_size
    card = {
        "format": ONNX_CARD_FORMAT,
        "architecture": cfg["name"],
        "model": cfg,
        "graph": spec.card | {
            "input": "images", "layout": "NCHW RGB 0..255", "input_dtype": opts.input_dtype,
            "normalisation": "in graph", "dynamic_size": bool(opts.dynamic_size and spec.card["kind"] == "detector"),
            "size": [h, w], "outputs": spec.output_names, "opset": opts.opset, "bn_folded": fused.fused,
        },
        "source": source,
        "onnx": out.name,
        "onnx_md5": md5sum(out),
        "torch": torch.__version__,
        **(extra or {}),
    }
    if opts.check:
        try:
            card["parity"] = parity_check(spec, out)
        except ExportError:
            out.unlink(missing_ok=True)  # never leave a graph that failed its check where a runner could load it
            raise
    onnx_card_path(out).write_text(json.dumps(card, indent=2))
    return card


def _inputs(spec: GraphSpec) -> tuple[Tensor, ...]:
    return spec.example if isinstance(spec.example, tuple) else (spec.example,)


def parity_check(spec: GraphSpec, onnx_path) -> dict:
    """Run the traced example through ONNX Runtime and eager.

    Raw outputs: max abs / relative error per output; beyond 1e-3 of an output's largest value the export
    fails. An NMS graph: detection counts and, matched one to one by box distance, the largest box and score
    differences; recorded only (a random trace image gives near-tied scores, whose order may differ).
    """
    from detkd.runtime import make_session

    sess = make_session(onnx_path)
    inputs = _inputs(spec)
    names = ["images", *spec.card.get("extra_inputs", [])]
    got = [torch.from_numpy(g) for g in sess.run(None, {n: t.numpy() for n, t in zip(names, inputs)})]
    with torch.no_grad():
        ref = spec.module(*inputs)
    ref = ref if isinstance(ref, tuple) else (ref,)
    res: dict = {"input": list(inputs[0].shape)}
    if spec.card.get("with_nms"):
        (rb, rs), (gb, gs) = ref[:2], got[:2]
        res["detections"] = [int(rs.numel()), int(gs.numel())]
        if rs.numel() and rs.numel() == gs.numel():
            dist = (rb[:, None, :] - gb[None, :, :]).abs().amax(-1)  # [N, N]
            if "labels" in spec.output_names:  # multi-class: one box may be kept for several labels
                lab = spec.output_names.index("labels")
                dist = dist + 1e6 * (ref[lab][:, None] != got[lab][None, :])
            match = dist.argmin(1)
            res["one_to_one"] = bool(match.unique().numel() == rs.numel())
            res["max_box_px"] = float(dist.gather(1, match[:, None]).max())
            res["max_score_err"] = float((rs - gs[match]).abs().max())
        return res
    res |= {"max_abs_err": {}, "max_rel_err": {}}
    bad = {}
    for name, r, g in zip(spec.output_names, ref, got):
        if r.shape != g.shape:
            bad[name] = f"shape {list(g.shape)} vs eager {list(r.shape)}"
            continue
        err = float((r - g).abs().max()) if r.numel() else 0.0
        rel = err / max(1.0, float(r.abs().max()) if r.numel() else 0.0)  # relative to the output's scale
        res["max_abs_err"][name], res["max_rel_err"][name] = err, rel
        if rel > 1e-3:
            bad[name] = f"max error {err:.3g} ({rel:.2g} of the largest value)"
    if bad:
        raise ExportError(f"{onnx_path}: ONNX Runtime output differs from eager on the trace input: {bad}")
    return res
