"""Detection inference with the reference test pipelines (EVAL.md §4, METHODS.md §1.9): one image, or batches.

A ``Protocol`` fixes the test scale and the post-processing:

* ``biubug6-origin``: the biubug6 HEAD ``test_widerface.py`` as it actually runs: original image size (r = 1),
  face score > 0.02, greedy "+1" NMS at 0.4, no top-k before or after NMS.
* ``tdkd-1600``: TDKD ``test_widerface.py``: r = 1600 / short side, or 2150 / long side if
  ``round(r * long side) > 2150``; score > 0.02, top 5000 by score, NMS 0.3, keep the first 750.
* ``tdkd-640``: the same test rule at SynthFaces' scale (640 / 860 instead of 1600 / 2150). The TDKD numbers
  (METHODS.md §1.13) are measured with the upscaled test: WIDER val images are about 1024 x 700, so 1600 is a
  2-2.3x upscale, and 640 is the same 2x for SynthFaces' 320-pixel scenes. Without it, faces under 16 px
  are smaller than the smallest anchor and no model finds them (the hard subset is mostly such faces).

Pre-processing as the reference: the uint8 image becomes float32, is resized with ``cv2.INTER_LINEAR`` on the
float image (``fx = fy = r``), not padded; the model subtracts its mean. Boxes and landmarks are decoded in
resized-input pixels and divided by r, so ``detect_image`` returns original-image pixels:
``{"boxes" [N, 4] xyxy, "scores" [N], "labels" [N]}`` plus ``"landmarks" [N, 5, 2]`` when the model predicts
them (CPU tensors, descending score). Images are numpy ``uint8 [H, W, 3]`` RGB (``read_image``).

Batched evaluation: ``ProtocolImages(dataset, protocol)`` wraps a data set of ``(image uint8 [H, W, 3], meta)``
samples into ``(float32 [3, h, w] resized, meta + {"scale": r})``; ``collate_images`` keeps the batch as lists
(sizes differ); ``detect_batch(model, images, metas, protocol)`` runs one forward per distinct input size in the
batch (all of them at once when the sizes agree) and returns the per-image detections in original pixels, the
same numbers ``detect_image`` gives image by image.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from detkd.data.image import read_image  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Protocol:
    name: str
    target_size: int | None  # short side after resizing; None = original size
    max_size: int | None  # cap on the long side (only with target_size)
    conf_thresh: float
    nms_thresh: float
    top_k: int | None  # best-scoring boxes kept before NMS (None = all)
    keep_top_k: int | None  # boxes kept after NMS (None = all)
    nms: str | None = None  # NMS preset of detkd.ops.nms (None = the model's default, the reference greedy NMS)


PROTOCOLS: dict[str, Protocol] = {
    "biubug6-origin": Protocol("biubug6-origin", None, None, 0.02, 0.4, None, None),
    "tdkd-1600": Protocol("tdkd-1600", 1600, 2150, 0.02, 0.3, 5000, 750),
    "tdkd-640": Protocol("tdkd-640", 640, 860, 0.02, 0.3, 5000, 750),
}


def get_protocol(protocol):
    """A face ``Protocol`` by name, or an object-detector ``DetProtocol`` (``detkd.infer_detector``)."""
    from detkd.infer_detector import DET_PROTOCOLS, DetProtocol

    if isinstance(protocol, (Protocol, DetProtocol)):
        return protocol
    if protocol in DET_PROTOCOLS:
        return DET_PROTOCOLS[protocol]
    if protocol not in PROTOCOLS:
        from detkd.registry import close_matches

        known = [*PROTOCOLS, *DET_PROTOCOLS]
        hint = close_matches(str(protocol), known, n=3, cutoff=0.4)
        raise ValueError(f"unknown protocol {protocol!r}{hint} (known: {', '.join(known)})")
    return PROTOCOLS[protocol]


def resize_factor(height: int, width: int, protocol: str | Protocol) -> float:
    """The reference's test-scale factor r for an image of ``height x width``."""
    p = get_protocol(protocol)
    if p.target_size is None:
        return 1.0
    short, long = min(height, width), max(height, width)
    r = float(p.target_size) / float(short)
    if p.max_size is not None and np.round(r * long) > p.max_size:
        r = float(p.max_size) / float(long)
    return r


def preprocess(image_rgb: np.ndarray, protocol: str | Protocol) -> tuple[torch.Tensor, float]:
    """``(float32 [1, 3, h, w] RGB 0..255, r)`` (contiguous) with the reference resize applied."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image_rgb.shape}")
    r = resize_factor(image_rgb.shape[0], image_rgb.shape[1], protocol)
    if r == 1.0:  # planes split in uint8, then one float32 cast (faster than casting HWC, then transposing)
        return torch.from_numpy(np.stack(cv2.split(image_rgb)).astype(np.float32))[None], r
    img = cv2.resize(image_rgb.astype(np.float32), None, None, fx=r, fy=r, interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None], r


def to_original(det: dict, scale: float) -> dict:
    """One image's detections from resized-input pixels back to original pixels (CPU tensors): ``boxes`` and
    ``landmarks`` (when present) divided by ``scale``; every other entry (scores, labels) copied."""
    out = {}
    for k, v in det.items():
        v = v.detach().cpu() if torch.is_tensor(v) else v
        out[k] = v / scale if k in ("boxes", "landmarks") else v
    return out


def with_nms(protocol, nms: str | None):
    """``protocol`` (a name, face ``Protocol`` or object ``DetProtocol``) with its NMS preset replaced by ``nms``
    (``--nms``; a name of ``detkd.ops.nms.NMS_PRESETS``, checked here); ``None`` returns it unchanged."""
    import dataclasses

    from detkd.infer_detector import DetProtocol
    from detkd.ops.nms import get_nms

    p = get_protocol(protocol)
    if nms is None:
        return p
    get_nms(nms)  # a clear error for an unknown preset
    if isinstance(p, DetProtocol):
        return dataclasses.replace(p, thresholds={**(p.thresholds or {}), "nms": nms})
    return dataclasses.replace(p, nms=nms)


def _postprocess(model: nn.Module, out, p: Protocol) -> list[dict]:
    extra = {} if p.nms is None else {"nms": p.nms}
    return model.postprocess(out, score_thresh=p.conf_thresh, nms_thresh=p.nms_thresh, top_k=p.top_k,
                             keep_top_k=p.keep_top_k, **extra)


@torch.no_grad()
def detect_image(model: nn.Module, image_rgb: np.ndarray, protocol: str | Protocol = "biubug6-origin") -> dict:
    """Detect objects in one RGB image; boxes (and landmarks, if any) in original-image pixels (module docstring)."""
    p = get_protocol(protocol)
    x, r = preprocess(image_rgb, p)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        d = _postprocess(model, model(x.to(device)), p)[0]
    finally:
        model.train(was_training)
    return to_original(d, r)


class ProtocolImages(torch.utils.data.Dataset):
    """``dataset[i] = (image uint8 [H, W, 3] RGB, meta)`` -> ``(float32 [3, h, w] resized by the protocol,
    meta + {"scale": r, "orig_size": (H, W)})``; ``indices`` selects (and orders) the samples used."""

    def __init__(self, dataset, protocol: str | Protocol, indices=None):
        self.dataset = dataset
        self.protocol = get_protocol(protocol)
        self.indices = list(range(len(dataset))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, meta = self.dataset[self.indices[i]]
        if not isinstance(self.protocol, Protocol):  # object detectors: keep-ratio resize + pad (infer_detector)
            from detkd.infer_detector import preprocess as preprocess_det

            x, hw, scale = preprocess_det(image, self.protocol)
            return x[0], {**meta, "image_size": hw, "box_scale": scale, "orig_size": tuple(image.shape[:2])}
        x, r = preprocess(image, self.protocol)
        return x[0], {**meta, "scale": r, "orig_size": tuple(image.shape[:2])}


def collate_images(batch) -> tuple[list[torch.Tensor], list[dict]]:
    """``[(image [3, h, w], meta), ...]`` -> ``(list of images, list of metas)`` (sizes may differ)."""
    images, metas = zip(*batch)
    return list(images), list(metas)


@torch.no_grad()
def detect_batch(model: nn.Module, images: list[torch.Tensor], metas: list[dict],
                 protocol: str | Protocol) -> list[dict]:
    """Detections of a batch of protocol-resized images ``[3, h_i, w_i]`` in original pixels (``meta["scale"]``).

    Images of the same size go through the model together (no padding: padding would move the reference's
    numbers); the model is used in whatever mode it is in (``inference_on_dataset`` sets eval mode).
    """
    p = get_protocol(protocol)
    if not isinstance(p, Protocol):
        from detkd.infer_detector import detect_batch as detect_batch_det

        return detect_batch_det(model, images, metas, p)
    device = next(model.parameters()).device
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    dets: list[dict | None] = [None] * len(images)
    for idx in groups.values():
        x = torch.stack([images[i] for i in idx]).to(device)  # [b, 3, h, w]
        for i, d in zip(idx, _postprocess(model, model(x), p)):
            dets[i] = to_original(d, metas[i]["scale"])
    return dets


def draw_detections(image_rgb: np.ndarray, dets: dict, out_png, gt_boxes=None, min_score: float = 0.5,
                    names: list[str] | None = None) -> Path:
    """Write a PNG with detections (red boxes labelled with the score, 5 landmark dots when ``dets`` has
    ``landmarks``) and optional GT boxes (green, xyxy). ``names``: class names indexed by ``dets["labels"]``;
    the label then reads ``name score``. Boxes scoring below ``min_score`` are not drawn."""
    canvas = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    if gt_boxes is not None:
        for x1, y1, x2, y2 in np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4):
            cv2.rectangle(canvas, (int(x1), int(y1)), (int(x2), int(y2)), (0, 200, 0), 1)
    boxes = np.asarray(dets["boxes"], dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(dets["scores"], dtype=np.float64).reshape(-1)
    lms = dets.get("landmarks")
    lms = None if lms is None else np.asarray(lms, dtype=np.float64).reshape(-1, 5, 2)
    labels = None if names is None else np.asarray(dets["labels"]).reshape(-1).astype(np.int64)
    colours = [(0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0)]  # BGR
    for i in np.nonzero(scores >= min_score)[0]:
        x1, y1, x2, y2 = (int(v) for v in boxes[i])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 0, 255), 2)
        text = f"{scores[i]:.2f}"
        if labels is not None:
            name = names[labels[i]] if 0 <= labels[i] < len(names) else str(labels[i])
            text = f"{name} {text}"
        cv2.putText(canvas, text, (x1, max(y1 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
        if lms is not None:
            for (px, py), c in zip(lms[i], colours):
                cv2.circle(canvas, (int(px), int(py)), 1, c, 2)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_png), canvas):
        raise ValueError(f"{out_png}: could not write the PNG")
    return out_png


def detect_files(weights, protocol: str, out_dir, fmt: str, images, backend: str = "eager",
                 event: str | None = None, min_score: float = 0.5, progress: bool | None = None) -> list[Path]:
    """``detkd detect``: run an exported detector over image files; write WIDER txt files or PNGs.

    ``fmt="widerface-txt"`` writes ``out_dir/<event>/<stem>.txt`` with event = ``event`` or else the image's
    parent directory name; ``fmt="png"`` writes ``out_dir/<stem>.png`` (inputs from several folders mirror the
    input tree; see ``detkd.detect_outputs``), drawing boxes scoring at least ``min_score``. Outputs that would
    clash are refused before the model runs. ``backend``: ``"eager"`` (a ``.safetensors`` model file, run with
    BatchNorm folded) or ``"onnxruntime"`` (an ``.onnx`` from ``detkd export --onnx``), see ``detkd.runtime``.
    ``progress``: a progress bar over the images (``None``: only on a terminal). Returns the written paths, one
    per image, all distinct.
    """
    from tqdm.auto import tqdm

    from detkd.detect_outputs import png_targets, wider_events
    from detkd.runtime import load_inference_model

    if fmt not in ("widerface-txt", "png"):
        raise ValueError(f"unknown output format {fmt!r}; choose widerface-txt or png")
    images = [Path(x) for x in images]
    out_dir = Path(out_dir)
    if fmt == "widerface-txt":
        from detkd.eval.widerface import write_txt

        events = wider_events(images, event)
    else:
        targets = png_targets(images, out_dir)
    p = get_protocol(protocol)
    model, _ = load_inference_model(weights, backend, kind="detector")
    written = []
    bar = tqdm(images, desc=f"detect ({p.name})", unit="img", disable=None if progress is None else not progress)
    for i, path in enumerate(bar):
        image = read_image(path)
        dets = detect_image(model, image, p)
        if fmt == "widerface-txt":
            written.append(write_txt(out_dir, events[i], path.stem, dets["boxes"].numpy(), dets["scores"].numpy()))
        else:
            written.append(draw_detections(image, dets, targets[i], min_score=min_score))
    return written
