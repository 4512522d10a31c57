"""Teacher output cache for face-recognition distillation (DESIGN.md "Teacher outputs can be cached").

The teacher embeds every training image once: the **un-flipped** image, the **raw (un-normalised)**
embedding ``[D]`` (METHODS.md §5.3), keyed by the image key of the data set. When a method needs the
teacher's class centres (MarginDistillation, Margin-based with T) the cache also stores the teacher's
ArcFace classifier weight ``[K, D]`` (insightface ``fc7``), un-normalised as saved.

A cache file is valid for one **fingerprint** = sha256 over

* the teacher weights (the bytes of its weights file, or every tensor of a state dict in key order),
* the ordered list of image keys, and
* the input image size.

``TeacherCache.build_or_load`` reuses a file whose fingerprint matches and rebuilds a stale one; the teacher
is constructed (``make_teacher()``) only when a rebuild is needed, so a training run with a valid cache never
loads the teacher. Files are ``torch.save`` dicts written atomically, read back with ``weights_only=True``:

    {"version": 1, "fingerprint": str, "keys": list[str], "img_size": int,
     "embeddings": float32 [N, D], "centres": float32 [K, D] | None}
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_REQUIRED = ("version", "fingerprint", "keys", "img_size", "embeddings", "centres")


# ------------------------------------------------------------------------------------------ fingerprints


def weights_digest(weights: str | Path | Mapping[str, Tensor]) -> str:
    """sha256 of a weights file's bytes, or of a state dict's names, dtypes, shapes and values."""
    h = hashlib.sha256()
    if isinstance(weights, (str, Path)):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"teacher weights file not found: {path}")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    for name in sorted(weights):
        t = weights[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_fingerprint(weights: str | Path | Mapping[str, Tensor], keys: Sequence[str], img_size: int) -> str:
    """The cache identity: teacher weights + ordered image keys + input size."""
    h = hashlib.sha256()
    h.update(weights_digest(weights).encode())
    h.update(f"|img_size={int(img_size)}|n={len(keys)}|".encode())
    for k in keys:
        h.update(k.encode())
        h.update(b"\0")
    return h.hexdigest()


def classifier_weight(model: nn.Module) -> Tensor:
    """The ArcFace classifier weight ``[K, D]`` of a face model (``model.head.weight``)."""
    head = getattr(model, "head", None)
    weight = getattr(head, "weight", None)
    if not isinstance(weight, Tensor):
        raise AttributeError(
            f"{type(model).__name__} has no classifier weight `head.weight`: the teacher must be built with "
            "num_classes > 0 and saved with its ArcFace head to provide class centres"
        )
    return weight


# ------------------------------------------------------------------------------------------------- cache


class TeacherCache:
    """Precomputed raw teacher embeddings by image key, plus optional teacher class centres."""

    def __init__(
        self,
        keys: Sequence[str],
        embeddings: Tensor,
        centres: Tensor | None = None,
        fingerprint: str = "",
        img_size: int = 0,
        path: str | Path | None = None,
    ):
        if embeddings.ndim != 2 or embeddings.shape[0] != len(keys):
            raise ValueError(f"embeddings must be [N={len(keys)}, D], got {list(embeddings.shape)}")
        self.keys = list(keys)
        self.embeddings = embeddings.float()  # [N, D]
        self.centres = None if centres is None else centres.float()  # [K, D]
        self.fingerprint = fingerprint
        self.img_size = int(img_size)
        self.path = None if path is None else Path(path)
        self.rebuilt = False  # set by build_or_load: True when the teacher had to run
        self._index = {k: i for i, k in enumerate(self.keys)}
        if len(self._index) != len(self.keys):
            raise ValueError("teacher cache keys are not unique")

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def index_of(self, key: str) -> int:
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"image key {key!r} is not in the teacher cache {self.path or '<memory>'}") from None

    def get(self, key: str) -> Tensor:  # [D]
        return self.embeddings[self.index_of(key)]

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "version": CACHE_VERSION,
            "fingerprint": self.fingerprint,
            "keys": self.keys,
            "img_size": self.img_size,
            "embeddings": self.embeddings.contiguous(),
            "centres": None if self.centres is None else self.centres.contiguous(),
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(payload, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TeacherCache":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"teacher cache not found: {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a readable teacher cache ({type(e).__name__}: {e})") from e
        missing = [k for k in _REQUIRED if not isinstance(payload, dict) or k not in payload]
        if missing:
            raise ValueError(f"{path}: teacher cache is missing the field(s) {missing}")
        if payload["version"] != CACHE_VERSION:
            raise ValueError(f"{path}: teacher cache version {payload['version']} != {CACHE_VERSION}")
        try:
            return cls(
                payload["keys"], payload["embeddings"], payload["centres"],
                payload["fingerprint"], payload["img_size"], path,
            )
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    # ------------------------------------------------------------------ building

    @classmethod
    def build_or_load(
        cls,
        path: str | Path,
        *,
        teacher_weights: str | Path | Mapping[str, Tensor],
        dataset: Dataset,
        make_teacher: Callable[[], nn.Module],
        img_size: int,
        need_centres: bool = False,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ) -> "TeacherCache":
        """Reuse ``path`` if its fingerprint matches, else embed ``dataset`` with ``make_teacher()`` and save.

        ``dataset`` exposes ``keys`` (one per item, in order) and ``dataset[i][0]`` is the image
        ``[3, H, W]`` (RGB 0..255, un-flipped); the teacher returns an ``EmbedOutput``.
        """
        keys = list(dataset.keys)
        fp = cache_fingerprint(teacher_weights, keys, img_size)
        path = Path(path)
        if path.is_file():
            try:
                cached = cls.load(path)
            except ValueError as e:
                log.warning("teacher cache %s unreadable (%s); rebuilding", path, e)
            else:
                if cached.fingerprint == fp and (cached.centres is not None or not need_centres):
                    log.info("teacher cache %s is valid (%d embeddings); teacher not loaded", path, len(cached))
                    return cached
                log.info("teacher cache %s is stale; rebuilding", path)
        teacher = make_teacher()
        embeddings = embed_dataset(teacher, dataset, batch_size=batch_size, device=device)
        centres = classifier_weight(teacher).detach().float().cpu() if need_centres else None
        cache = cls(keys, embeddings, centres, fp, img_size)
        cache.save(path)
        cache.rebuilt = True
        return cache


@torch.no_grad()
def embed_dataset(model: nn.Module, dataset: Dataset, batch_size: int = 64, device="cpu") -> Tensor:
    """Raw embeddings ``[N, D]`` of every item's un-flipped image, in data-set order, model in eval mode."""
    was_training = model.training
    model.eval().to(device)
    out = []
    try:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i][0] for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([torch.as_tensor(im) for im in items]).float().to(device)  # [b, 3, H, W]
            out.append(model(images).embedding.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


class CachedFaceDataset(Dataset):
    """Wraps a face data set: item ``i`` is ``(image, label, teacher_embedding [D])`` looked up by key."""

    def __init__(self, base: Dataset, cache: TeacherCache):
        self.base = base
        self.cache = cache
        self.keys = list(base.keys)
        missing = [k for k in self.keys if k not in cache]
        if missing:
            raise KeyError(
                f"{len(missing)} image key(s) of the data set are not in the teacher cache "
                f"{cache.path or '<memory>'} (first: {missing[0]!r}); rebuild the cache"
            )
        self._rows = torch.tensor([cache.index_of(k) for k in self.keys], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        item = self.base[i]
        return item[0], item[1], self.cache.embeddings[self._rows[i]]

    def __getattr__(self, name):  # expose the base set's fields (samples, labels, num_classes, ...)
        if name in ("base", "cache", "keys", "_rows"):
            raise AttributeError(name)
        return getattr(self.base, name)
