"""Typed experiment configs: dataclasses in ``configs/**/*.py``, ``a.b=c`` overrides, clear errors.

A config file defines ``def config() -> ExperimentConfig``. ``load_config("configs/x/y.py", ["optim.lr=0.1"])``
imports it, applies the overrides with type checks, range-checks the values (``validate_config``) and returns
the dataclass. Unknown keys raise a ``ConfigError`` that names the close matches; every ``ConfigError`` is a
``detkd.errors.UserError`` naming the key. A string value may hold ``{train.out_dir}`` (e.g. a teacher trained
by another config of the same recipe: ``{train.out_dir}/teacher/final.pt``); it is replaced after the overrides,
so that ``train.out_dir=elsewhere`` moves those paths too.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import math
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from detkd.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


class ConfigError(UserError):
    """A bad config file, key or value; the message names the key (``train.batch_size=0: must be >= 1``)."""


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    bias_lr_mult: float = 1.0  # FGFI/py-faster-rcnn style: biases get lr × this
    bias_weight_decay: float | None = None  # None = same as weight_decay


@dataclass
class ScheduleConfig:
    """LR schedule, stepped per iteration. ``milestones`` are in epochs (fractions allowed)."""

    name: Literal["step", "cosine", "constant"] = "step"
    warmup_iters: int = 0
    warmup_factor: float = 1e-3
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    min_lr_factor: float = 0.0
    total_iters: int = 0  # cosine: the length it decays over, in iterations (0: epochs x iterations per epoch)


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 8
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # only takes effect on CUDA
    clip_grad: float = 0.0  # max grad norm; 0 disables clipping
    max_nonfinite: int = 10  # consecutive non-finite losses tolerated (step skipped) before aborting
    log_every: int = 10
    ckpt_every: int = 1  # epochs
    eval_every: int = 0  # epochs; 0 = only at the end
    max_iters: int = 0  # >0 stops after this many iterations (smoke runs)
    ckpt_every_iters: int = 0  # also checkpoint every N iterations (0 = only at epoch ends)
    out_dir: str = "runs"
    init_weights: str = ""  # student initialisation (a detkd checkpoint, export, or safetensors)
    # ImageNet trunk: the legacy MobileNetV1 .tar (a pickle: needs trust_pickle); for Faster R-CNN a torchvision
    # VGG / ResNet state dict or faster-rcnn.pytorch's caffe vgg16 (.pth read weights_only / .safetensors); for
    # RetinaNet / GFL a torchvision ResNet state dict; for all of them a `detkd pretrain-trunk` SynthShapes trunk
    backbone_init: str = ""
    trust_pickle: bool = False  # explicit consent to torch.load(weights_only=False) on backbone_init
    deterministic: bool = True
    resume: bool = False  # continue from <run dir>/last.pt (the config must equal the saved config.json)
    overwrite: bool = False  # replace the run already in <run dir> (otherwise training refuses to start there)
    allow_changed: list[str] = field(default_factory=list)  # keys (or sections) a resume may change
    drop_last: bool = False
    amp_dtype: str = "auto"  # auto (bf16 where supported, else fp16) | bf16 | fp16
    find_unused_parameters: bool = False  # DDP
    sync_bn: bool = False  # DDP: convert BatchNorm to SyncBatchNorm
    tensorboard: bool = True
    progress: bool = True


@dataclass
class DetDataConfig:
    """A registered detection data set: ``build("dataset", cfg, split="train" | "val")``."""

    name: str = "synthfaces"  # registered dataset builder
    root: str = "data/synthfaces"  # SynthFaces is generated here on first use (seed 0)
    img_size: int = 320  # training input size
    augment: bool = True
    seed: int = -1  # augmentation RNG seed; -1 = use train.seed
    size_divisor: int = 32  # batches are padded bottom/right to a multiple of this (collate, not the dataset)


@dataclass
class SynthFacesDataConfig(DetDataConfig):
    """SynthFaces (``detkd.data.synthfaces``): generated under ``root`` on first use with ``data_seed`` and
    ``n_train`` / ``n_val`` scenes (a root remembers them and refuses other values). Data written by
    ``detkd data synthfaces DIR --seed N`` trains with ``data.root=DIR data.data_seed=N``."""

    name: str = "synthfaces"
    root: str = "data/synthfaces"
    data_seed: int = 0  # the scenes' generator seed
    n_train: int = 600
    n_val: int = 150


@dataclass
class SynthShapesDataConfig(DetDataConfig):
    """SynthShapes (``detkd.data.synthshapes``): generated under ``root`` on first use with ``data_seed``,
    ``n_train`` / ``n_val`` scenes (a root remembers them and refuses other values)."""

    name: str = "synthshapes"
    root: str = "data/synthshapes"
    data_seed: int = 0  # the scenes' generator seed
    n_train: int = 1500
    n_val: int = 500
    max_long: int = 512  # training: long side cap after resizing the short side to img_size
    preset: str = "full"  # generator knob set (detkd.data.synthshapes.PRESETS: full | cpu | easy)


@dataclass
class VOCDataConfig(DetDataConfig):
    """PASCAL VOC in VOCdevkit layout (``detkd.data.voc``): training on ``roots`` x ``splits`` (VOC07+12
    trainval: ``roots=[VOCdevkit/VOC2007, VOCdevkit/VOC2012]``, ``splits=[trainval]``), evaluation on
    ``val_roots`` x ``val_splits`` (default: the first root's ``test``). Images are resized to short side
    ``img_size`` (``short``: several sizes = multi-scale training) with the long side capped at ``max_long``."""

    name: str = "voc"
    root: str = ""  # unused: ``roots``
    roots: list[str] = field(default_factory=lambda: ["data/VOCdevkit/VOC2007"])
    splits: list[str] = field(default_factory=lambda: ["trainval"])
    val_roots: list[str] = field(default_factory=list)  # empty: roots[0]
    val_splits: list[str] = field(default_factory=lambda: ["test"])
    img_size: int = 600  # short side
    short: list[int] = field(default_factory=list)  # empty: [img_size]
    max_long: int = 1000
    train_difficult: bool = False


@dataclass
class COCODataConfig(DetDataConfig):
    """COCO instances (``detkd.data.coco``): ``ann_file`` / ``images_dir`` for training, ``val_ann_file`` /
    ``val_images_dir`` for evaluation; short side ``img_size`` (``short``: multi-scale), long side <= ``max_long``
    (mmdet's 1333 x 800); images without boxes are dropped from training (``drop_empty``)."""

    name: str = "coco"
    root: str = ""  # unused: the annotation files and image folders
    ann_file: str = "data/coco/annotations/instances_train2017.json"
    images_dir: str = "data/coco/train2017"
    val_ann_file: str = "data/coco/annotations/instances_val2017.json"
    val_images_dir: str = "data/coco/val2017"
    img_size: int = 800  # short side
    short: list[int] = field(default_factory=list)  # empty: [img_size]
    max_long: int = 1333
    drop_empty: bool = True
    train_difficult: bool = False


@dataclass
class DetEvalConfig:
    """Evaluation of a detector on the val split of ``cfg.data`` with a registered evaluator."""

    evaluator: str = "widerface"  # registered evaluator (`detkd list evaluators`)
    protocol: str = "biubug6-origin"  # test-time resize + post-processing preset of detkd.infer.PROTOCOLS
    images_dir: str = ""  # given to the data set's val builder when set (default: its own layout under root)
    gt_dir: str = ""  # ditto, the ground-truth location
    max_images: int = 0  # >0 evaluates only the first N val images (smoke runs)
    batch_size: int = 1  # images per forward (same-size ones batched; >1 moves scores by float rounding, ~1e-7)
    num_workers: int = 0  # DataLoader workers decoding images
    also: list[str] = field(default_factory=list)  # more evaluators on the same detections, e.g. [coco]


@dataclass
class ExperimentConfig:
    name: str
    task: Literal["detection", "facerec"] = "detection"
    model: Any = None  # a model-config dataclass with a ``name`` field (see detkd.registry.build_model)
    data: Any = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: Any = None
    distill: Any = None  # a distillation config, or None for plain training

    @property
    def run_dir(self) -> Path:
        return Path(self.train.out_dir) / self.name


# --------------------------------------------------------------------------------------------- loading


def resolve_config_path(name: str | Path) -> Path:
    """A path to a ``.py`` file, or a name relative to ``configs/`` with or without ``.py``."""
    p = Path(name)
    candidates = [p, p.with_suffix(".py"), CONFIG_DIR / p, (CONFIG_DIR / p).with_suffix(".py")]
    for c in candidates:
        if c.is_file():
            return c
    known = list_configs()
    raise ConfigError(f"config {str(name)!r} not found{_suggest(str(name), known)}")


def list_configs() -> list[str]:
    if not CONFIG_DIR.is_dir():
        return []
    return sorted(
        str(p.relative_to(CONFIG_DIR).with_suffix(""))
        for p in CONFIG_DIR.rglob("*.py")
        if not p.name.startswith("_")
    )


def load_config(name: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    path = resolve_config_path(name)
    spec = importlib.util.spec_from_file_location(f"detkd_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)  # a config may import the shared presets beside it (``_<name>.py``)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # surface the config file, not our loader
        raise ConfigError(f"{path}: failed to import: {type(e).__name__}: {e}", path=path) from e
    finally:
        sys.path.remove(folder)
    if not hasattr(module, "config"):
        raise ConfigError(f"{path}: defines no `config()` function")
    cfg = module.config()
    apply_overrides(cfg, overrides)
    if dataclasses.is_dataclass(getattr(cfg, "train", None)):
        fill_out_dir(cfg, str(cfg.train.out_dir))
    validate_config(cfg)
    return cfg


OUT_DIR = "{train.out_dir}"


def fill_out_dir(obj: Any, out_dir: str) -> None:
    """Replace ``{train.out_dir}`` by ``out_dir`` in every string value (and list of strings) of the config."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, str) and OUT_DIR in value:
            setattr(obj, f.name, value.replace(OUT_DIR, out_dir))
        elif isinstance(value, list) and any(isinstance(v, str) and OUT_DIR in v for v in value):
            setattr(obj, f.name, [v.replace(OUT_DIR, out_dir) if isinstance(v, str) else v for v in value])
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            fill_out_dir(value, out_dir)


# ------------------------------------------------------------------------------------------ overrides


def _suggest(key: str, choices) -> str:
    from detkd.registry import close_matches

    return close_matches(key, choices, n=4, cutoff=0.4)


def section_names(obj: Any) -> list[str]:
    """Names of the config sections ``obj`` resolves beyond its fields (``DistillConfig``: the method names).

    A config class opts in with two methods: ``config_section_names() -> list[str]`` and
    ``config_section(name, create=True) -> dataclass`` (a default section, kept only with ``create``).
    """
    fn = getattr(type(obj), "config_section_names", None)
    return list(fn(obj)) if fn is not None else []


def all_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        k = prefix + f.name
        keys.append(k)
        if dataclasses.is_dataclass(v):
            keys += all_keys(v, k + ".")
    for name in section_names(cfg):
        if prefix + name not in keys:
            keys.append(prefix + name)
            keys += all_keys(cfg.config_section(name, create=False), prefix + name + ".")
    return keys


def apply_overrides(cfg: Any, overrides) -> Any:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form a.b=c")
        key, raw = item.split("=", 1)
        set_key(cfg, key.strip(), raw.strip())
    return cfg


def set_key(cfg: Any, key: str, raw: str) -> None:
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(obj)]
        if part not in names and i < len(parts) - 1 and part in section_names(obj):
            obj = obj.config_section(part)  # e.g. distill.tdkd.scale: a method's section
            continue
        if part not in names:
            where = ".".join(parts[:i]) or "<root>"
            raise ConfigError(
                f"unknown config key {key!r} ({part!r} is not a field of {where})"
                f"{_suggest(key, all_keys(cfg)) or _suggest(part, names)}", key=key
            )
        if i == len(parts) - 1:
            hint = typing.get_type_hints(type(obj))[part]
            try:
                value = parse_value(raw, hint, getattr(obj, part))
            except (ValueError, SyntaxError, TypeError) as e:
                raise ConfigError(f"{key}={raw!r}: {e}", key=key) from None
            setattr(obj, part, value)
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is {obj!r}, not a config section")


def parse_value(raw: str, hint: Any, current: Any = None) -> Any:
    """Parse ``raw`` as the type ``hint``; raise ValueError with a readable reason."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        if current is None or isinstance(current, str):
            return raw
        return parse_value(raw, type(current), current)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return parse_value(raw, a, current)
            except (ValueError, SyntaxError, TypeError) as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        for a in args:
            try:
                v = parse_value(raw, type(a))
            except ValueError:
                continue
            if v == a:
                return v
        raise ValueError(f"must be one of {list(args)}")
    if hint is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a bool (true/false), got {raw!r}")
    if hint is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected an int, got {raw!r}") from None
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"expected a float, got {raw!r}") from None
    if hint is str:
        return raw
    if origin in (list, tuple):
        text = raw if raw.startswith(("[", "(")) else f"[{raw}]"
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):  # bare names: methods=[tdkd,kd] or methods=tdkd,kd
            items = [t.strip() for t in text.strip("[]()").split(",") if t.strip()]
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"expected a list, got {raw!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(f"expected {len(args)} values, got {len(items)}")
            return tuple(parse_value(str(v), a) for v, a in zip(items, args))
        inner = args[0] if args else Any
        out = [parse_value(repr(v) if isinstance(v, (list, tuple)) else str(v), inner) for v in items]
        return tuple(out) if origin is tuple else out
    if origin is dict or hint is dict:
        v = ast.literal_eval(raw)
        if not isinstance(v, dict):
            raise ValueError(f"expected a dict, got {raw!r}")
        return v
    raise TypeError(f"cannot override a field of type {hint}")


# ------------------------------------------------------------------------------------------ validation

# key -> (check, what it must be). Keys absent from a config (e.g. a data section without ``img_size``) are
# skipped; values of the wrong type were already refused by the override parser.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "train.epochs": (lambda v: v >= 1, ">= 1"),
    "train.batch_size": (lambda v: v >= 1, ">= 1"),
    "train.num_workers": (lambda v: v >= 0, ">= 0"),
    "train.seed": (lambda v: v >= 0, ">= 0"),
    "train.max_nonfinite": (lambda v: v >= 1, ">= 1"),
    "train.log_every": (lambda v: v >= 1, ">= 1"),
    "train.ckpt_every": (lambda v: v >= 0, ">= 0 (0 = only at the end)"),
    "train.eval_every": (lambda v: v >= 0, ">= 0 (0 = only at the end)"),
    "train.max_iters": (lambda v: v >= 0, ">= 0 (0 = no limit)"),
    "train.ckpt_every_iters": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "train.clip_grad": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0 (0 = off)"),
    "train.amp_dtype": (lambda v: v in ("auto", "bf16", "bfloat16", "fp16", "float16"), "auto, bf16 or fp16"),
    "train.device": (lambda v: re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
                     "auto, cpu, cuda or cuda:N"),
    "optim.lr": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "optim.momentum": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "optim.weight_decay": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "optim.betas": (lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "optim.bias_lr_mult": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "sched.warmup_iters": (lambda v: v >= 0, ">= 0"),
    "sched.warmup_factor": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "sched.gamma": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "sched.min_lr_factor": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "sched.total_iters": (lambda v: v >= 0, ">= 0 (0: epochs x iterations per epoch)"),
    "sched.milestones": (lambda v: all(m >= 0 for m in v), "epochs >= 0"),
    "data.img_size": (lambda v: not isinstance(v, int) or v >= 1, ">= 1"),
}


def _get(cfg: Any, key: str) -> tuple[bool, Any]:
    obj = cfg
    for part in key.split("."):
        if obj is None or not dataclasses.is_dataclass(obj) or not hasattr(obj, part):
            return False, None
        obj = getattr(obj, part)
    return True, obj


def validate_config(cfg: Any) -> Any:
    """Range-check the values of ``cfg`` (see ``_RULES``); raise ``ConfigError`` naming the first bad key."""
    for key, (ok, what) in _RULES.items():
        present, value = _get(cfg, key)
        if not present or value is None:
            continue
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"{key}={value!r}: must be {what}", key=key)
    return cfg


def _type_name(hint: Any) -> str:
    name = getattr(hint, "__name__", None)
    return name if name and not typing.get_args(hint) else str(hint).replace("typing.", "")


def format_config(cfg: Any) -> str:
    """One line per leaf key: ``train.epochs = 1  (int)``; sections that are ``None`` show as ``None``."""
    lines = [f"# {type(cfg).__name__} {getattr(cfg, 'name', '')}".rstrip()]

    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                lines.append(f"[{prefix}{f.name}]  ({type(v).__name__})")
                walk(v, f"{prefix}{f.name}.")
            else:
                lines.append(f"{prefix}{f.name} = {v!r}  ({_type_name(hints.get(f.name, Any))})")

    walk(cfg, "")
    return "\n".join(lines)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
