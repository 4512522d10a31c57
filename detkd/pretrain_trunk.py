"""Trunk pretraining on SynthShapes object crops: the embedded stand-in for ImageNet.

Every detector in the papers starts from an ImageNet-pretrained trunk. SynthShapes has no such trunk, and a
detector that must learn twelve shape classes from random init inside a quarter-hour CPU schedule ends near chance,
teacher and student alike (``benchmarks/results/synthshapes_capacity.md``), which leaves distillation nothing to
transfer. This module gives the trunks the same head start the papers' trunks have:

* ``shape_crops`` renders scenes of a split of their own (``default_rng([seed, 2, i])``: never a detector's train
  or val scene) and cuts out every non-difficult annotated object as a jittered square with context, plus
  background patches (distractors, textures) as class 0, ``none``; all resized to ``size`` px.
* ``train_trunk`` trains the trunk with a linear classifier on the crops (13-way: none + the 12 classes), SGD,
  cosine decay, label smoothing, flips and quarter turns.
* ``save_trunk`` writes the trunk in torchvision's key layout without the classifier (``conv1.*``, ``bn1.*``,
  ``layer1..4.*`` for ResNet; ``features.*`` for VGG) as ``.safetensors`` with a JSON card beside it, so that
  ``train.backbone_init=PATH`` loads it into every family built on that trunk.

Inputs are RGB 0..255 normalised with the ImageNet mean / std, as every detkd detector's ``preprocess`` does.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from detkd.data.synthshapes import SYNTHSHAPES_CLASSES, preset_config, render_scene
from detkd.models.gfl import MMDET_MEAN, MMDET_STD  # ImageNet mean / std on 0..255, as the detectors normalise

ASSETS = Path(__file__).resolve().parent / "assets"
PRETRAIN_SPLIT = 2  # the scene seed index of the crops (train 0, val 1)
CLASSES = ("none", *SYNTHSHAPES_CLASSES)


@dataclass
class TrunkSpec:
    """Which trunk: ``arch`` ``resnet`` (depth 18/34/50/101) or ``vgg`` (11/13/16, BatchNorm), ``width`` scale."""

    arch: str = "resnet"
    depth: int = 18
    width: float = 0.25

    def build(self, num_classes: int = len(CLASSES)) -> nn.Module:
        """The trunk with global average pooling and a ``num_classes`` linear classifier."""
        if self.arch == "resnet":
            from detkd.models.resnet_fpn import narrow_resnet

            net = narrow_resnet(self.depth, self.width)
            net.fc = nn.Linear(net.fc.in_features, num_classes)
            return net
        if self.arch == "vgg":
            from detkd.models.rcnn_trunks import vgg_c4

            features, channels = vgg_c4(self.depth, self.width, batch_norm=True)
            return VGGClassifier(features, channels, num_classes)
        raise ValueError(f"trunk arch must be 'resnet' or 'vgg', got {self.arch!r}")


class VGGClassifier(nn.Module):
    """VGG ``features`` (C4: without the last max-pool, as the Faster R-CNN trunk) + global pool + linear."""

    def __init__(self, features: nn.Sequential, channels: int, num_classes: int):
        super().__init__()
        self.features = features
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean((2, 3)))


# ------------------------------------------------------------------------------------------------ crops


def _square(img: np.ndarray, cx: float, cy: float, side: float, size: int) -> np.ndarray:
    """The ``side`` px square centred at (cx, cy), resized to ``size`` (outside the image: reflected)."""
    s = size / side
    m = np.array([[s, 0, size / 2 - s * cx], [0, s, size / 2 - s * cy]], np.float32)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)


def _scene_crops(args) -> tuple[list[np.ndarray], list[int]]:
    seed, i, preset, size, backgrounds = args
    rng = np.random.default_rng([seed, PRETRAIN_SPLIT, i])
    img, objects = render_scene(rng, preset_config(preset))
    crops, labels = [], []
    for o in objects:
        if o["difficult"]:
            continue
        x0, y0, x1, y1 = o["box"]
        longer = max(x1 - x0, y1 - y0)
        side = longer * rng.uniform(1.15, 1.7)
        cx = (x0 + x1) / 2 + rng.uniform(-0.12, 0.12) * longer
        cy = (y0 + y1) / 2 + rng.uniform(-0.12, 0.12) * longer
        crops.append(_square(img, cx, cy, side, size))
        labels.append(o["label"])
    h, w = img.shape[:2]
    boxes = np.array([o["box"] for o in objects]).reshape(-1, 4)
    for _ in range(backgrounds):  # a patch that holds no more than a fifth of any object is "none"
        for _try in range(10):
            side = rng.uniform(16, 0.6 * min(h, w))
            cx, cy = rng.uniform(side / 2, w - side / 2), rng.uniform(side / 2, h - side / 2)
            ix = np.clip(np.minimum(boxes[:, 2], cx + side / 2) - np.maximum(boxes[:, 0], cx - side / 2), 0, None)
            iy = np.clip(np.minimum(boxes[:, 3], cy + side / 2) - np.maximum(boxes[:, 1], cy - side / 2), 0, None)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            if not len(boxes) or (ix * iy / np.maximum(area, 1)).max() < 0.2:
                crops.append(_square(img, cx, cy, side, size))
                labels.append(0)
                break
    return crops, labels


def shape_crops(n_scenes: int, preset: str = "cpu", seed: int = 0, size: int = 64, backgrounds: int = 1,
                workers: int = 2, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(crops uint8 [N, size, size, 3] RGB, labels int64 [N])`` from ``n_scenes`` scenes of the pretraining
    split; label 0 is ``none``, 1..12 are SynthShapes' classes. The result depends only on the arguments (not on
    ``workers``)."""
    from tqdm.auto import tqdm

    jobs = [(seed, i, preset, size, backgrounds) for i in range(n_scenes)]
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            parts = list(tqdm(pool.imap(_scene_crops, jobs, chunksize=32), total=n_scenes, desc="crops",
                              unit="scene", disable=not progress))
    else:
        parts = [_scene_crops(j) for j in tqdm(jobs, desc="crops", unit="scene", disable=not progress)]
    crops = [c for cs, _ in parts for c in cs]
    labels = [y for _, ys in parts for y in ys]
    return np.stack(crops), np.asarray(labels, np.int64)


# ------------------------------------------------------------------------------------------------ training


@dataclass
class PretrainConfig:
    scenes: int = 4000        # crops come from this many scenes (about 4 objects + 1 background patch each)
    val_frac: float = 0.1     # the last scenes' crops, held out for the accuracy on the card
    size: int = 64
    epochs: int = 12
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    preset: str = "cpu"
    seed: int = 0


def _augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random horizontal flip and quarter turn per batch (classes are rotation-invariant by construction)."""
    if torch.rand((), generator=gen) < 0.5:
        x = x.flip(3)
    return torch.rot90(x, int(torch.randint(4, (), generator=gen)), (2, 3))


_MEAN, _STD = torch.tensor(MMDET_MEAN).view(1, 3, 1, 1), torch.tensor(MMDET_STD).view(1, 3, 1, 1)


def _normalise(x: np.ndarray) -> Tensor:
    return (torch.from_numpy(x).permute(0, 3, 1, 2).float() - _MEAN) / _STD


@torch.no_grad()
def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    net.eval()
    right = 0
    for i in range(0, len(x), batch_size):
        right += int((net(_normalise(x[i:i + batch_size])).argmax(1).numpy() == y[i:i + batch_size]).sum())
    return right / max(len(x), 1)


def train_trunk(spec: TrunkSpec, cfg: PretrainConfig, crops: tuple[np.ndarray, np.ndarray] | None = None,
                progress: bool = True, log=print) -> tuple[nn.Module, dict]:
    """Train ``spec``'s trunk as a crop classifier; returns ``(classifier, card)`` (card: accuracies, counts)."""
    from tqdm.auto import tqdm

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    if crops is None:
        crops = shape_crops(cfg.scenes, cfg.preset, cfg.seed, cfg.size, progress=progress)
    x, y = crops
    n_val = int(round(len(x) * cfg.val_frac))
    xt, yt, xv, yv = x[:-n_val or None], y[:-n_val or None], x[len(x) - n_val:], y[len(y) - n_val:]
    net = spec.build()
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay}],
                          lr=cfg.lr, momentum=0.9, nesterov=True)
    steps_per_epoch = max(1, len(xt) // cfg.batch_size)
    total, warmup = cfg.epochs * steps_per_epoch, min(200, steps_per_epoch)

    def factor(s: int) -> float:  # linear warm-up, then cosine to zero
        return (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    for epoch in range(cfg.epochs):
        net.train()
        order = torch.randperm(len(xt), generator=gen).numpy()
        bar = tqdm(range(steps_per_epoch), desc=f"pretrain {epoch + 1}/{cfg.epochs}", disable=not progress)
        for s in bar:
            idx = np.sort(order[s * cfg.batch_size:(s + 1) * cfg.batch_size])
            xb = _augment(_normalise(xt[idx]), gen)
            loss = F.cross_entropy(net(xb), torch.from_numpy(yt[idx]), label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if s % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        acc = accuracy(net, xv, yv)
        history.append({"epoch": epoch + 1, "val_acc": acc, "loss": loss.item()})
        log(f"epoch {epoch + 1}/{cfg.epochs}: val accuracy {acc:.3f} (last loss {loss.item():.3f})")
    counts = np.bincount(y, minlength=len(CLASSES)).tolist()
    card = {"format": "detkd-trunk/1", "trunk": asdict(spec), "pretrain": asdict(cfg), "classes": list(CLASSES),
            "n_train": int(len(xt)), "n_val": int(n_val), "class_counts": counts, "val_acc": history[-1]["val_acc"],
            "chance": max(counts) / max(1, sum(counts)), "history": history, "train_s": round(time.time() - t0, 1)}
    return net, card


def trunk_state(net: nn.Module) -> dict[str, Tensor]:
    """The trunk's tensors in torchvision's layout, without the classifier (``fc.*``)."""
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items() if not k.startswith("fc.")}


def save_trunk(net: nn.Module, card: dict, out) -> Path:
    """Write ``out`` (.safetensors) and ``out`` with ``.json`` (the card), each atomically."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out}: the trunk file must end in .safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(trunk_state(net), str(tmp))
    tmp.replace(out)
    meta = out.with_suffix(".json")
    tmp = meta.with_name(meta.name + ".tmp")
    tmp.write_text(json.dumps({**card, "weights": out.name}, indent=2) + "\n")
    tmp.replace(meta)
    return out


def shipped_trunk(name: str) -> str:
    """Path of a shipped SynthShapes trunk, ``detkd/assets/synthshapes_trunk_<name>.safetensors`` (``r18_w025``,
    ``r18_w05``, ``vgg11_w025``, ``vgg16_w0375``); the configs' ``train.backbone_init``."""
    path = ASSETS / f"synthshapes_trunk_{name}.safetensors"
    if not path.is_file():
        have = sorted(p.stem.removeprefix("synthshapes_trunk_") for p in ASSETS.glob("synthshapes_trunk_*.safetensors"))
        raise FileNotFoundError(f"{path}: no shipped trunk {name!r} (shipped: {', '.join(have) or 'none'})")
    return str(path)


def trunk_for(model_cfg) -> str:
    """The shipped trunk whose card matches a detector config's trunk (VGG for ``*vgg*`` model names, else ResNet;
    depth, width), or ``""`` when none is shipped: for code that swaps a config's model for another width."""
    arch = "vgg" if "vgg" in model_cfg.name else "resnet"
    for card in sorted(ASSETS.glob("synthshapes_trunk_*.json")):
        t = json.loads(card.read_text())["trunk"]
        if (t["arch"], t["depth"], t["width"]) == (arch, model_cfg.depth, model_cfg.width):
            return str(card.with_suffix(".safetensors"))
    return ""


__all__ = ["CLASSES", "PretrainConfig", "TrunkSpec", "accuracy", "save_trunk", "shape_crops", "shipped_trunk",
           "train_trunk", "trunk_for", "trunk_state"]
