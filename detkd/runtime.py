"""Inference backends: eager PyTorch (BatchNorm folded) and ONNX Runtime, behind one model-like interface.

``load_inference_model(path, backend)`` returns an object that ``detkd.infer.detect_image`` and
``detkd.experiment.evaluate_widerface`` use exactly like an eager detector:

* ``"eager"``: ``path`` is a detkd model file (``.safetensors`` + card); the model is fused
  (``detkd.models.fuse``) and, by default, in ``channels_last`` (about 1.3x faster on CPU for RetinaFace).
* ``"onnxruntime"``: ``path`` is an ``.onnx`` written by ``detkd export --onnx`` with its ``.onnx.json`` card.
  ``OrtDetector(images)`` returns a ``DetOutput`` whose ``head`` holds the graph's raw outputs per level and
  whose ``priors`` come from the model's own prior code, so ``postprocess`` is the eager decoding; a graph
  exported ``--with-nms`` returns ``dets`` directly and accepts only the protocol recorded in its card.
  The CPU provider is used unless the CUDA provider is available (``providers`` overrides).

The card is checked before ONNX Runtime sees the file: format, md5 of the ONNX file, model kind, graph
input/output names; a mismatch is a one-line ``ValueError`` naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from detkd.structures import DetOutput, EmbedOutput

BACKENDS = ("eager", "onnxruntime")


def default_providers() -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in have else []) + ["CPUExecutionProvider"]


def make_session(path, providers=None, threads: int | None = None):
    """An ONNX Runtime session; ``threads`` (default: torch's intra-op thread count) for the CPU provider."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("ONNX Runtime is not installed: pip install 'detkd[onnx]'") from e
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=providers or default_providers())
    except Exception as e:  # onnxruntime raises its own exception types for invalid graphs
        raise ValueError(f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {str(e).splitlines()[0]})") from e


def read_onnx_card(path) -> dict:
    """The card of an exported ``.onnx``, checked against the file (format and md5)."""
    from detkd.export import ONNX_CARD_FORMAT, onnx_card_path
    from detkd.models.weights import md5sum

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    card_path = onnx_card_path(path)
    if not card_path.is_file():
        raise FileNotFoundError(f"model card not found: {card_path} "
                                "(written beside the .onnx by `detkd export --onnx`)")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{card_path}: invalid JSON ({e})") from e
    if card.get("format") != ONNX_CARD_FORMAT:
        raise ValueError(f"{card_path}: not an ONNX model card (format {card.get('format')!r}, "
                         f"expected {ONNX_CARD_FORMAT!r})")
    if card.get("onnx_md5") != md5sum(path):
        raise ValueError(f"{path}: this ONNX file is not the one its card {card_path.name} describes "
                         f"(md5 differs; card written for {card.get('onnx')!r}, {card.get('architecture')!r}); "
                         "re-export, or keep each .onnx with its own .onnx.json")
    return card


def _check_io(session, card: dict, path) -> None:
    g = card["graph"]
    ins = [i.name for i in session.get_inputs()]
    outs = [o.name for o in session.get_outputs()]
    want = [g["input"], *g.get("extra_inputs", [])]
    if ins != want or outs != list(g["outputs"]):
        raise ValueError(f"{path}: graph inputs/outputs {ins} -> {outs} do not match the card's "
                         f"{want} -> {g['outputs']}")


class _OrtModel(nn.Module):
    """Shared part of the ONNX Runtime runners: session, card, input conversion."""

    def __init__(self, path, providers=None, threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.card = read_onnx_card(self.path)
        self.graph = self.card["graph"]
        self.session = make_session(self.path, providers, threads)
        _check_io(self.session, self.card, self.path)
        from detkd.models.weights import build_from_card

        # The architecture's own (randomly initialised) module: priors, post-processing and the device anchor
        # for callers that ask ``next(model.parameters()).device``; its weights are never used.
        from detkd.export import onnx_card_path

        self.skeleton = build_from_card({"model": self.card["model"]}, onnx_card_path(self.path)).eval()

    @property
    def config(self):
        return self.skeleton.config

    def _feed(self, images: Tensor) -> np.ndarray:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
        g = self.graph
        if not g["dynamic_size"] and list(images.shape[-2:]) != list(g["size"]):
            raise ValueError(f"{self.path}: the graph is fixed to {g['size'][0]}x{g['size'][1]} input, got "
                             f"{images.shape[-2]}x{images.shape[-1]}; re-export with --dynamic-size")
        x = images.detach().cpu()
        if g["input_dtype"] == "uint8":
            return x.round().clamp(0, 255).to(torch.uint8).numpy()
        return x.float().contiguous().numpy()


class OrtDetector(_OrtModel):
    """A dense detector in ONNX Runtime with the eager detector's ``forward`` / ``postprocess`` interface."""

    def __init__(self, path, providers=None, threads: int | None = None):
        super().__init__(path, providers, threads)
        if self.graph["kind"] != "detector":
            raise ValueError(f"{self.path}: the card describes a {self.graph['kind']} "
                             f"({self.card['architecture']}), not a detector")
        self.thresholds = dict(self.skeleton.thresholds)

    def forward(self, images: Tensor, targets=None, decode: bool = False, image_sizes=None) -> DetOutput:
        if targets is not None:
            raise ValueError("the ONNX Runtime backend is inference-only (no targets, no losses)")
        h, w = images.shape[-2:]
        sizes = [(int(h), int(w))] * images.shape[0] if image_sizes is None else [tuple(s) for s in image_sizes]
        if self.graph["with_nms"]:  # a batch-1 graph: one run per image
            dets = []
            for i in range(images.shape[0]):
                feed = {"images": self._feed(images[i:i + 1])}
                if "image_size" in self.graph.get("extra_inputs", []):  # generic detectors: boxes clipped to it
                    feed["image_size"] = np.asarray(sizes[i], dtype=np.int64)
                outs = dict(zip(self.graph["outputs"], (torch.from_numpy(o) for o in self.session.run(None, feed))))
                if "labels" not in outs:  # RetinaFace: one class
                    outs["labels"] = torch.ones(len(outs["scores"]), dtype=torch.long)
                dets.append(outs)
            return DetOutput(dets=dets, image_sizes=sizes)
        outs = self.session.run(None, {"images": self._feed(images)})
        keys, levels = self.graph["head"]["keys"], self.graph["head"]["levels"]
        it = iter(torch.from_numpy(o) for o in outs)
        head = {k: [next(it) for _ in levels] for k in keys}
        out = DetOutput(head=head, priors=self.skeleton.make_priors(int(h), int(w), torch.device("cpu")),
                        image_sizes=sizes)
        if decode:
            out.dets = self.postprocess(out)
        return out

    def postprocess(self, out: DetOutput, **thresholds) -> list[dict[str, Tensor]]:
        """The eager model's ``postprocess`` on the graph's raw heads; a ``--with-nms`` graph returns its own
        detections and refuses thresholds other than those of the protocol it was exported with."""
        if not self.graph["with_nms"]:
            return self.skeleton.postprocess(out, **thresholds)
        p = self.graph["protocol"]
        if "thresholds" in p:  # generic detectors: the merged model + protocol thresholds
            baked = dict(p["thresholds"])
        else:
            baked = {"score_thresh": p["conf_thresh"], "nms_thresh": p["nms_thresh"], "top_k": p["top_k"],
                     "keep_top_k": p["keep_top_k"]}
        differ = {k: (v, baked.get(k)) for k, v in thresholds.items() if v is not None and v != baked.get(k)}
        if differ:
            raise ValueError(f"{self.path}: exported --with-nms for protocol {p['name']!r}; asked for other "
                             f"post-processing {differ} (asked, baked in): use --protocol {p['name']} or a raw export")
        return out.dets


class OrtFaceRecognizer(_OrtModel):
    """A face recognizer in ONNX Runtime: ``forward(images) -> EmbedOutput(embedding)``."""

    def __init__(self, path, providers=None, threads: int | None = None):
        super().__init__(path, providers, threads)
        if self.graph["kind"] != "face_recognizer":
            raise ValueError(f"{self.path}: the card describes a {self.graph['kind']}, not a face recognizer")
        self.input_size = self.skeleton.input_size

    def forward(self, images: Tensor, labels=None, margin=None) -> EmbedOutput:
        return EmbedOutput(embedding=torch.from_numpy(self.session.run(None, {"images": self._feed(images)})[0]))


def load_inference_model(path, backend: str = "eager", kind: str | None = None, channels_last: bool = True,
                         providers=None, threads: int | None = None) -> tuple[nn.Module, dict]:
    """``(model, card)`` ready for inference on the chosen backend (see the module docstring).

    ``kind`` ("detector" / "face_recognizer"): refuse a model of another kind with a one-line error.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "eager":
        if path.suffix == ".onnx":
            raise ValueError(f"{path}: an ONNX file runs with --backend onnxruntime")
        from detkd.models.fuse import fuse_model
        from detkd.models.weights import load_model_file

        model, card = load_model_file(path)
        have = "detector" if hasattr(model, "postprocess") else "face_recognizer"
        if kind is not None and have != kind:
            raise ValueError(f"{path}: the card describes a {have} ({type(model).__name__}), not a {kind}")
        return fuse_model(model, channels_last=channels_last, inplace=True), card
    if path.suffix != ".onnx":
        raise ValueError(f"{path}: --backend onnxruntime needs an .onnx file written by `detkd export --onnx`")
    card = read_onnx_card(path)
    have = card["graph"]["kind"]
    if kind is not None and have != kind:
        raise ValueError(f"{path}: the card describes a {have} ({card.get('architecture')}), not a {kind}")
    cls = OrtFaceRecognizer if have == "face_recognizer" else OrtDetector
    return cls(path, providers, threads), card
