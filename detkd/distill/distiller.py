"""The distillation machinery: terms, the ``Distiller`` that evaluates them, and ``DistillTask``.

A run (DESIGN.md "A distillation run")::

    with torch.no_grad(): t = teacher(images)          # eval mode, frozen, the identical images tensor
    s = student(images, targets)                       # DetOutput with assign + task losses
    kd = distiller(t, s, targets, step)                # {"kd.tdkd.cls.p3": ..., "kd.tdkd.prob": ...}
    loss = sum(s.losses.values()) + sum(kd.values())

A ``Term`` names a student tap, a teacher tap, a loss ``loss(s, t, mask=...) -> scalar`` (from ``losses.py``),
a weight, an optional mask builder ``mask(ctx) -> Tensor | None`` (from ``masks.py``), an optional adapter
applied to the student tap, an optional warm-up/decay ``Schedule``, and an optional ``group`` whose terms share
one dynamic scale ``group_scale(sg(Σ raw group losses), ctx)`` (TDKD's sg(L_loc)/sg(L_feat)). Taps are
``DetOutput.feats`` keys (``"p3"``, ``"cls_feat.p3"``) or ``"head.<key>"`` for a head output with all levels
concatenated (``[B, P, K]``). A term's output key is ``kd.<method>.<name>`` and its value is
``weight · schedule(step) · group_scale · raw``. Methods compose by concatenating their terms.

``DistillTask`` implements the engine's task contract (docs/contracts.md): its registered children are the
student and the distiller (adapters); the teacher is held outside them, so it is never in ``state_dict``,
``parameters()``, the optimizer or DDP. It follows ``.to()``/``.cuda()`` of the task and always stays in eval.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from detkd.data.loader import batch_image_sizes
from detkd.distill.adapters import AdapterSpec, build_adapter
from detkd.distill.masks import MaskInputs, mask_inputs
from detkd.registry import METHODS, close_matches, load_all, lookup, register
from detkd.structures import HeadKey

HEAD_PREFIX = "head."


# ------------------------------------------------------------------------------------------- terms


@dataclass(frozen=True)
class Schedule:
    """Weight factor over training iterations.

    Warm-up: for ``step < warmup_iters`` the factor is 0 (``warmup="zero"``, FGFI) or ramps linearly from 0
    to 1 (``warmup="linear"``). Decay: from ``decay_start`` the factor falls linearly to 0 over ``decay_iters``
    iterations (``decay_iters=0`` = no decay).
    """

    warmup_iters: int = 0
    warmup: str = "linear"  # "linear" | "zero"
    decay_start: int = 0
    decay_iters: int = 0

    def factor(self, step: int) -> float:
        f = 1.0
        if step < self.warmup_iters:
            f = 0.0 if self.warmup == "zero" else step / self.warmup_iters
        if self.decay_iters > 0 and step >= self.decay_start:
            f *= max(0.0, 1.0 - (step - self.decay_start) / self.decay_iters)
        return f


@dataclass
class DistillContext:
    """What a mask builder or group scale sees for one batch. ``memo`` caches work shared by several terms.

    ``teacher_model`` is the frozen teacher module itself (``None`` when the teacher's outputs come from a
    cache); ``query_teacher`` runs one of its methods on the student's intermediate results.
    """

    teacher: Any  # DetOutput (or EmbedOutput)
    student: Any
    targets: list[dict] | None
    step: int
    cache: dict = field(default_factory=dict)
    teacher_model: nn.Module | None = None

    def memo(self, key: str, fn: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = fn()
        return self.cache[key]

    def mask_inputs(self, taps: Sequence[str], level_key: str | None = None, what: str = "this mask") -> MaskInputs:
        """The student's ``MaskInputs`` for ``taps`` (level ``l`` on ``taps[l]``), built once per batch."""
        key = f"mask_inputs:{','.join(taps)}:{level_key}"
        return self.memo(key, lambda: mask_inputs(self.student, taps, self.targets, level_key, what))

    def query_teacher(self, method: str, *args, **kwargs) -> Any:
        """``teacher_model.<method>(*args, **kwargs)`` under ``torch.no_grad()``, teacher in eval mode.

        The teacher-query hook: a method runs part of the teacher on the student's intermediate results, e.g.
        DeFeat's ``ctx.query_teacher("roi_forward", feats, proposals, image_sizes)`` scores the student's RoIs
        with the teacher's box head. Results carry no gradient. Memoise with ``ctx.memo`` when several terms
        need the same query.
        """
        model = self.teacher_model
        if model is None:
            raise RuntimeError(
                f"query_teacher({method!r}): no teacher model in this distillation step (teacher outputs from a "
                "cache cannot answer queries; run with the teacher in memory)"
            )
        fn = getattr(model, method, None) if not method.startswith("_") else None
        if not callable(fn):
            public = [n for n in dir(model) if not n.startswith("_") and callable(getattr(model, n, None))]
            raise AttributeError(
                f"query_teacher: the teacher ({type(model).__name__}) has no method {method!r}"
                f"{close_matches(method, public)}"
            )
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return fn(*args, **kwargs)
        finally:
            model.train(was_training)


@dataclass
class Term:
    name: str  # output key suffix: "cls.p3" -> "kd.<method>.cls.p3"
    student: str  # student tap
    teacher: str  # teacher tap
    loss: Callable[..., Tensor]  # loss(s, t, mask=...) -> scalar
    weight: float = 1.0
    mask: Callable[[DistillContext], Tensor | None] | None = None
    adapter: AdapterSpec | None = None
    schedule: Schedule | None = None
    group: str | None = None  # terms of one group share group_scale
    group_scale: Callable[[Tensor, DistillContext], Tensor] | None = None
    method: str = ""  # filled by build_distill_task from the method name when empty
    teacher_parts: tuple[str, ...] = ()  # teacher outputs read beyond the tap (masks, queries): "rois", "head"

    @property
    def key(self) -> str:
        return f"kd.{self.method}.{self.name}" if self.method else f"kd.{self.name}"


def available_taps(out: Any) -> list[str]:
    taps = list(getattr(out, "feats", {}) or {})
    taps += [HEAD_PREFIX + k for k in (getattr(out, "head", {}) or {})]
    taps += [k for k in ("embedding", "logits") if getattr(out, k, None) is not None]
    return taps


def get_tap(out: Any, name: str, side: str = "") -> Tensor:
    """The tensor a tap name refers to: ``feats[name]``, ``"head.<key>"`` (levels concatenated, ``[B, P, K]``),
    or ``"embedding"``/``"logits"`` of an ``EmbedOutput``."""
    if name.startswith(HEAD_PREFIX):
        key = name[len(HEAD_PREFIX):]
        head = getattr(out, "head", {}) or {}
        if key in head:
            return torch.cat(head[key], dim=1)
    elif name in (getattr(out, "feats", {}) or {}):
        return out.feats[name]
    elif name in ("embedding", "logits") and getattr(out, name, None) is not None:
        return getattr(out, name)
    taps = available_taps(out)
    raise KeyError(
        f"{side + ' ' if side else ''}output has no tap {name!r}{close_matches(name, taps)} "
        f"(available taps: {', '.join(taps) or 'none'})"
    )


def _module_key(key: str) -> str:
    """ModuleDict keys may not contain dots."""
    return key.replace(".", "_")


# --------------------------------------------------------------------------------------- distiller


class Distiller(nn.Module):
    """Owns the adapters (``nn.ModuleDict``, sized from declared channels) and evaluates the terms."""

    def __init__(
        self,
        terms: Sequence[Term],
        student_channels: dict[str, int] | None = None,
        teacher_channels: dict[str, int] | None = None,
    ):
        super().__init__()
        self.terms = list(terms)
        seen: set[str] = set()
        for term in self.terms:
            if term.key in seen:
                raise ValueError(f"two distillation terms are named {term.key!r}")
            seen.add(term.key)
        self.adapters = nn.ModuleDict()
        specs: dict[str, tuple[AdapterSpec, int, int]] = {}
        for term in self.terms:
            if term.adapter is None:
                continue
            c_in = _declared(student_channels, term.student, "student", term.key)
            c_out = _declared(teacher_channels, term.teacher, "teacher", term.key)
            spec = term.adapter
            if spec.key in specs:
                if specs[spec.key] != (spec, c_in, c_out):
                    raise ValueError(
                        f"adapter {spec.key!r} is requested with different settings: {specs[spec.key]} "
                        f"and {(spec, c_in, c_out)} (term {term.key!r})"
                    )
                continue
            if _module_key(spec.key) in self.adapters:
                raise ValueError(f"adapter keys {spec.key!r} and another one differ only in '.' vs '_'")
            specs[spec.key] = (spec, c_in, c_out)
            self.adapters[_module_key(spec.key)] = build_adapter(spec, c_in, c_out)

    def teacher_skip(self, teacher: nn.Module) -> tuple[str, ...]:
        """The optional parts of the teacher's forward no term reads (``teacher.skippable(taps)`` minus every
        term's ``teacher_parts``): a Faster R-CNN teacher of FGFI / DeFeat / TDKD / feat runs no second stage,
        a dense teacher of neck-only terms runs no head. ``()`` for a model without ``skippable``."""
        skippable = getattr(teacher, "skippable", None)
        if not callable(skippable):
            return ()
        needed = {p for term in self.terms for p in term.teacher_parts}
        return tuple(p for p in skippable({term.teacher for term in self.terms}) if p not in needed)

    def adapt(self, term: Term, x: Tensor) -> Tensor:
        return x if term.adapter is None else self.adapters[_module_key(term.adapter.key)](x)

    def forward(
        self, t_out: Any, s_out: Any, targets: list[dict] | None = None, step: int = 0,
        teacher_model: nn.Module | None = None,
    ) -> dict[str, Tensor]:
        """Weighted KD terms ``{term.key: scalar}``; ``teacher_model`` enables ``DistillContext.query_teacher``."""
        ctx = DistillContext(teacher=t_out, student=s_out, targets=targets, step=int(step),
                             teacher_model=teacher_model)
        raw: dict[str, Tensor] = {}
        taps: dict[tuple[str, str], Tensor] = {}  # a head tap concatenates its levels once per side and batch

        def tap(out: Any, name: str, side: str) -> Tensor:
            if (side, name) not in taps:
                taps[side, name] = get_tap(out, name, side)
            return taps[side, name]

        for term in self.terms:
            s = self.adapt(term, tap(s_out, term.student, "student"))
            t = tap(t_out, term.teacher, "teacher").detach()
            mask = term.mask(ctx) if term.mask is not None else None
            raw[term.key] = term.loss(s, t, mask=mask)

        scales: dict[str, Tensor] = {}
        for term in self.terms:
            if term.group_scale is not None and term.group not in scales:
                members = [raw[x.key] for x in self.terms if x.group == term.group]
                scales[term.group] = term.group_scale(torch.stack(members).sum().detach(), ctx).detach()

        out = {}
        for term in self.terms:
            w = term.weight * (term.schedule.factor(ctx.step) if term.schedule is not None else 1.0)
            value = raw[term.key] * w
            if term.group_scale is not None:
                value = value * scales[term.group]
            out[term.key] = value
        return out


def _declared(channels: dict[str, int] | None, tap: str, side: str, term: str) -> int:
    if channels is None or tap not in channels:
        known = sorted(channels or {})
        raise KeyError(
            f"term {term!r} needs an adapter on {side} tap {tap!r}, but the {side} model declares no channels "
            f"for it{close_matches(tap, known)} (declared: {', '.join(known) or 'none'})"
        )
    return int(channels[tap])


def model_channels(model: nn.Module, side: str) -> dict[str, int]:
    channels = getattr(model, "channels", None)
    if not isinstance(channels, dict):
        raise TypeError(
            f"the {side} model ({type(model).__name__}) has no `channels` dict (tap name -> channels); every "
            "detkd model declares it"
        )
    return channels


# ------------------------------------------------------------------------------------------- task


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Eval mode (BN in inference mode), no gradients, for good."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def run_models(teacher: nn.Module, student: nn.Module, images: Tensor, targets: Any,
               image_sizes: list[tuple[int, int]] | None = None, skip: Sequence[str] = ()) -> tuple[Any, Any]:
    """Teacher (no grad, no targets: taps only, without the optional parts in ``skip``) and student (with
    targets) on the identical ``images``, both told the valid ``image_sizes`` of the padded batch."""
    with torch.no_grad():
        t_out = teacher(images, image_sizes=image_sizes, **({"skip": tuple(skip)} if skip else {}))
    s_out = student(images, targets, image_sizes=image_sizes)
    return t_out, s_out


def _batch_parts(batch: Any) -> tuple[Tensor, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(
            f"a detection batch is (images, targets, meta), got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    return batch[0], batch[1]


class DistillTask(nn.Module):
    """The engine's task: ``task((images, targets, meta)) -> {"task.*": ..., "kd.<method>.<term>": ...}``.

    Registered children: ``student`` and ``distiller`` (its adapters); ``kd_step`` (a buffer, so a resumed run
    continues the term schedules) counts training forwards. The teacher is stored outside the registered
    children and only follows device/dtype moves.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, distiller: Distiller):
        super().__init__()
        self.student = student
        self.distiller = distiller
        self.register_buffer("kd_step", torch.zeros((), dtype=torch.long))
        object.__setattr__(self, "_teacher", freeze_teacher(teacher))  # not a registered child
        self.teacher_skip = distiller.teacher_skip(teacher)  # teacher parts no term reads, never computed

    @property
    def teacher(self) -> nn.Module:
        return self._teacher

    def train(self, mode: bool = True) -> DistillTask:
        super().train(mode)
        self._teacher.eval()
        return self

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._teacher._apply(fn, *args, **kwargs)
        return self

    def set_step(self, step: int) -> None:
        self.kd_step.fill_(int(step))

    def forward(self, batch: Any) -> dict[str, Tensor]:
        images, targets = _batch_parts(batch)
        t_out, s_out = run_models(self._teacher, self.student, images, targets, batch_image_sizes(batch),
                                  self.teacher_skip)
        step = int(self.kd_step)
        if self.training:
            self.kd_step += 1
        losses = dict(s_out.losses)
        if not losses:
            raise RuntimeError("the student returned no task losses; it must be called with targets")
        kd = self.distiller(t_out, s_out, targets, step, teacher_model=self._teacher)
        clash = sorted(set(losses) & set(kd))
        if clash:
            raise KeyError(f"distillation loss names collide with task losses: {clash}")
        losses.update(kd)
        return losses

    def check_setup(self, sample_batch: Any, teacher_loaded: Any = True, accuracy_batches: Iterable = ()) -> dict:
        return check_setup(
            self._teacher, self.student, self.distiller, sample_batch, teacher_loaded, accuracy_batches
        )


# ------------------------------------------------------------------------------------ start-up checks


def _check_loaded(teacher_loaded: Any) -> None:
    if teacher_loaded is None or teacher_loaded is False:
        raise RuntimeError(
            "the teacher's weights were not loaded (set distill.teacher_weights): distilling from a randomly "
            "initialised teacher only adds noise"
        )
    missing = getattr(teacher_loaded, "missing_keys", None)
    if missing is None and isinstance(teacher_loaded, dict):
        missing = teacher_loaded.get("missing_keys", teacher_loaded.get("missing"))
    if missing:
        shown = ", ".join(list(missing)[:8]) + (" ..." if len(missing) > 8 else "")
        raise RuntimeError(f"the teacher checkpoint lacks {len(missing)} weights: {shown}")


def classification_key(model: nn.Module) -> tuple[str, HeadKey] | None:
    """The first ``head_spec`` entry of kind softmax or sigmoid (``None`` when the model declares none)."""
    for key, spec in (getattr(model, "head_spec", None) or {}).items():
        if spec.kind in ("softmax", "sigmoid"):
            return key, spec
    return None


def head_key(model: nn.Module, key: str, side: str, what: str) -> HeadKey:
    """``model.head_spec[key]``, or a clear error naming the caller (``what``) and the declared keys."""
    spec = getattr(model, "head_spec", None)
    if not isinstance(spec, dict):
        raise TypeError(f"{what}: the {side} model ({type(model).__name__}) declares no `head_spec`; every "
                        "detkd detector declares what its head outputs mean")
    if key not in spec:
        raise KeyError(f"{what}: the {side} model declares no head key {key!r}{close_matches(key, spec)} "
                       f"(declared: {', '.join(spec) or 'none'})")
    return spec[key]


def class_probability_kind(student: nn.Module, teacher: nn.Module, key: str, what: str) -> str:
    """``"softmax"`` or ``"sigmoid"``: how both models' ``head[key]`` become class probabilities.

    Raises at build time when either side does not declare ``key`` as a classification output, or when the two
    sides disagree in kind or number of columns (a softmax applied to sigmoid logits would be silent garbage).
    """
    s, t = head_key(student, key, "student", what), head_key(teacher, key, "teacher", what)
    for side, spec in (("student", s), ("teacher", t)):
        if spec.kind not in ("softmax", "sigmoid"):
            raise ValueError(f"{what}: the {side}'s head key {key!r} is of kind {spec.kind!r}, not class logits "
                             "(softmax or sigmoid)")
    if (s.kind, s.dim) != (t.kind, t.dim):
        raise ValueError(f"{what}: head key {key!r} is {s.kind} with {s.dim} columns in the student but {t.kind} "
                         f"with {t.dim} columns in the teacher; class KD needs the same classifier on both sides")
    return s.kind


@torch.no_grad()
def teacher_balanced_accuracy(teacher: nn.Module, batches: Iterable) -> float | None:
    """Balanced accuracy of the teacher on its own positives and negatives.

    ``(TPR + TNR) / 2`` over ``assign.pos`` and ``assign.neg`` of all batches, with the classification head
    key of ``teacher.head_spec`` (the first softmax or sigmoid entry). Predicted foreground: softmax: the
    argmax is not column 0 (background), class = argmax; sigmoid: the largest probability is > 0.5, class =
    argmax + 1. A positive counts as correct when foreground is predicted with its class (a label <= 0 on a
    positive, e.g. RetinaFace's face without landmarks, only needs foreground). ``None`` when the teacher
    declares no classification key, has no assignment, or the batches hold no positive or no negative.
    """
    found = classification_key(teacher)
    if found is None:
        return None
    key, spec = found
    tp = n_pos = tn = n_neg = 0
    for batch in batches:
        images, targets = _batch_parts(batch)
        out = teacher(images, targets, image_sizes=batch_image_sizes(batch))
        if getattr(out, "assign", None) is None or key not in getattr(out, "head", {}):
            return None
        logits = out.cat_head(key).float()  # [B, P, K+1] or [B, P, K]
        if spec.kind == "softmax":
            cls = logits.argmax(-1)  # [B, P], 0 = background
            fg = cls != 0
        else:
            best, idx = logits.sigmoid().max(-1)
            fg, cls = best > 0.5, idx + 1
        pos, neg = out.assign.pos.bool(), out.assign.neg.bool()
        labels = out.assign.labels
        right = fg & ((labels <= 0) | (cls == labels))
        tp += int((right & pos).sum())
        n_pos += int(pos.sum())
        tn += int((~fg & neg).sum())
        n_neg += int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    return 0.5 * (tp / n_pos + tn / n_neg)


def check_setup(
    teacher: nn.Module,
    student: nn.Module,
    distiller: Distiller,
    sample_batch: Any,
    teacher_loaded: Any = True,
    accuracy_batches: Iterable = (),
    min_balanced_acc: float = 0.55,
) -> dict:
    """Start-up checks; raise a clear error (or warn) before any training step.

    - the teacher's weights are loaded (``teacher_loaded``: a bool or a load report with ``missing_keys``);
    - teacher and student receive the identical images tensor, and neither changes it in place;
    - every term's taps exist on both outputs (the message lists the available taps);
    - after its adapter, each student tap has the teacher tap's shape (the message names both taps and shapes);
    - the teacher beats chance (balanced accuracy on its positives/negatives > ``min_balanced_acc``), else a
      warning.
    Returns ``{"taps": {term key: (student shape, teacher shape)}, "teacher_balanced_acc": float | None}``.
    """
    _check_loaded(teacher_loaded)
    images, targets = _batch_parts(sample_batch)
    seen: dict[str, Any] = {}

    def grab(name):
        def hook(_module, args):
            seen[name] = args[0] if args else None

        return hook

    before = images.detach().clone()
    handles = [teacher.register_forward_pre_hook(grab("teacher")), student.register_forward_pre_hook(grab("student"))]
    was_training = student.training
    student.eval()  # no BN statistics update from a check
    try:
        with torch.no_grad():
            t_out, s_out = run_models(teacher, student, images, targets, batch_image_sizes(sample_batch),
                                      distiller.teacher_skip(teacher))
    finally:
        student.train(was_training)
        for h in handles:
            h.remove()
    if seen.get("teacher") is not images or seen.get("student") is not images:
        raise RuntimeError("teacher and student did not receive the identical images tensor")
    if not torch.equal(images, before):
        raise RuntimeError(
            "a model changed the images tensor in place; teacher and student would see different inputs "
            "(normalise out of place)"
        )

    shapes = {}
    with torch.no_grad():
        for term in distiller.terms:
            s = get_tap(s_out, term.student, "student")
            t = get_tap(t_out, term.teacher, "teacher")
            adapted = s
            if term.adapter is not None:
                adapter = distiller.adapters[_module_key(term.adapter.key)]
                try:
                    adapted = adapter(s)
                except RuntimeError as e:
                    raise ValueError(
                        f"term {term.key!r}: adapter {term.adapter.key!r} cannot take student tap "
                        f"{term.student!r} {tuple(s.shape)} (teacher tap {term.teacher!r} {tuple(t.shape)}): "
                        f"the declared channels disagree with the output ({e})"
                    ) from None
            if adapted.shape != t.shape:
                via = f" after adapter {term.adapter.key!r} -> {tuple(adapted.shape)}" if term.adapter else ""
                raise ValueError(
                    f"term {term.key!r}: student tap {term.student!r} {tuple(s.shape)}{via} does not match "
                    f"teacher tap {term.teacher!r} {tuple(t.shape)}"
                )
            shapes[term.key] = (tuple(s.shape), tuple(t.shape))
        ctx = DistillContext(teacher=t_out, student=s_out, targets=targets, step=0, teacher_model=teacher)
        for term in distiller.terms:  # masks must build for this geometry
            if term.mask is not None:
                term.mask(ctx)

    acc = teacher_balanced_accuracy(teacher, [sample_batch, *accuracy_batches])
    if acc is not None and not acc > min_balanced_acc:
        warnings.warn(
            f"the teacher's balanced accuracy on its positives/negatives is {acc:.3f} (chance is 0.5): are its "
            "weights the trained ones?",
            stacklevel=2,
        )
    return {"taps": shapes, "teacher_balanced_acc": acc}


# ------------------------------------------------------------------------------ config and builders


class UnsupportedPairError(ValueError):
    """A method that declares it cannot run on this student/teacher pair (its ``supports`` hook gave a reason)."""


def supports_any(student: nn.Module, teacher: nn.Module) -> str | None:
    """The default ``supports`` hook: the method runs on every detector."""
    return None


def distill_method(config_cls: type, name: str | None = None,
                   supports: Callable[[nn.Module, nn.Module], str | None] | None = None):
    """``@distill_method(TDKDConfig, supports=fn)``: register a method builder ``(cfg, student, teacher) ->
    list[Term]`` under its function name, together with its config section class.

    ``supports(student, teacher) -> str | None`` is the method's declaration of where it runs: ``None`` when the
    pair can be distilled, else the reason it cannot (one sentence, naming what the models lack). It is checked
    by ``build_terms`` before the builder runs (``UnsupportedPairError`` with that reason) and read by
    ``detkd list methods --matrix``. Default: runs everywhere.
    """

    def wrap(fn):
        fn.config_cls = config_cls
        fn.supports = supports or supports_any
        return register("method", name)(fn)

    return wrap


def class_logits_reason(student: nn.Module, teacher: nn.Module, what: str) -> str | None:
    """A ``supports`` check for methods that read dense class logits: the reason a side declares no softmax or
    sigmoid head key (e.g. a two-stage detector, whose classes live in its RoI head), else ``None``."""
    for side, model in (("student", student), ("teacher", teacher)):
        spec = getattr(model, "head_spec", None)
        if not isinstance(spec, dict):
            return None  # not a detector at all: the builder's own start-up check names what is missing
        if not any(v.kind in ("softmax", "sigmoid") for v in spec.values()):
            where = " (a two-stage detector: its classes live in the RoI head)" if hasattr(model, "roi_forward") else ""
            declared = ", ".join(f"{k}: {v.kind}" for k, v in spec.items()) or "none"
            return (f"{what} needs dense class logits per prior, and the {side} {type(model).__name__} declares no "
                    f"softmax/sigmoid head key{where}; declared head_spec: {declared}")
    return None


def method_support(name: str, student: nn.Module, teacher: nn.Module) -> str | None:
    """``None`` when method ``name`` runs on this pair, else the reason it declares."""
    check = getattr(method_builder(name), "supports", supports_any)
    return check(student, teacher)


def check_support(name: str, student: nn.Module, teacher: nn.Module) -> None:
    """Raise ``UnsupportedPairError`` ("distill.<name> does not run on <Student> / <Teacher>: <reason>")."""
    reason = method_support(name, student, teacher)
    if reason:
        raise UnsupportedPairError(
            f"distill.{name} does not run on student {type(student).__name__} / teacher {type(teacher).__name__}: "
            f"{reason}"
        )


def method_builder(name: str) -> Callable:
    """The registered detection-distillation method ``name`` (a builder with a ``config_cls``); the error for an
    unknown name names the kind a misplaced name has (e.g. a face-recognition objective)."""
    fn = lookup("method", name)
    if not hasattr(fn, "config_cls"):
        raise KeyError(f"{name!r} is registered as a method but has no config class (use @distill_method)")
    return fn


def method_config(name: str) -> Any:
    """A default config section of a registered method."""
    return method_builder(name).config_cls()


def method_names() -> list[str]:
    """Every registered detection-distillation method."""
    load_all()
    return sorted(k for k, v in METHODS.items() if hasattr(v, "config_cls"))


@dataclass(init=False)
class DistillConfig:
    """``ExperimentConfig.distill``. ``teacher`` is a model config (``build_model(teacher)``), loaded from
    ``teacher_weights``; ``methods`` lists the methods whose terms are concatenated.

    Each method reads its own config section, kept in ``sections`` (method name -> that method's config
    dataclass); a method without a section gets its defaults (from the registry, on first use). Sections are
    reached as attributes and in overrides by the method's name: ``DistillConfig(methods=["tdkd"],
    tdkd=TDKDConfig(scale="fixed"))``, ``cfg.tdkd.scale``, ``distill.tdkd.scale=fixed``. No method is named
    here: a new method only registers itself (``@distill_method(ItsConfig)``).
    """

    teacher: Any = None
    teacher_weights: str = ""
    methods: list[str] = field(default_factory=lambda: ["tdkd"])
    sections: dict[str, Any] = field(default_factory=dict)

    def __init__(self, teacher: Any = None, teacher_weights: str = "", methods: list[str] | None = None,
                 sections: dict[str, Any] | None = None, **method_sections: Any):
        self.teacher = teacher
        self.teacher_weights = teacher_weights
        self.methods = ["tdkd"] if methods is None else list(methods)
        self.sections = dict(sections or {})
        for name, section in method_sections.items():
            method_builder(name)  # unknown names fail here, with close matches
            self.sections[name] = section

    def config_section(self, name: str, create: bool = True) -> Any:
        """The section of method ``name`` (created with the method's defaults on first use; ``create=False``
        returns a default without keeping it)."""
        if name in self.sections:
            return self.sections[name]
        section = method_config(name)
        if create:
            self.sections[name] = section
        return section

    def config_section_names(self) -> list[str]:
        return method_names()

    def __getattr__(self, name: str) -> Any:  # only called for names that are not attributes
        if name.startswith("_") or name in ("teacher", "teacher_weights", "methods", "sections"):
            raise AttributeError(name)
        try:
            return self.config_section(name)
        except KeyError as e:
            raise AttributeError(str(e)) from None


def build_terms(cfg: Any, student: nn.Module, teacher: nn.Module) -> list[Term]:
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ValueError(f"distill.methods lists a method twice: {cfg.methods}")
    terms: list[Term] = []
    for name in cfg.methods:
        builder = method_builder(name)
        check_support(name, student, teacher)
        section = cfg.config_section(name) if hasattr(cfg, "config_section") else getattr(cfg, name, None)
        if section is None:
            section = builder.config_cls()
        for term in builder(section, student, teacher):
            term.method = term.method or name
            terms.append(term)
    return terms


def build_distill_task(cfg: Any, student: nn.Module, teacher: nn.Module) -> DistillTask:
    """Terms of every method in ``cfg.methods`` -> a ``Distiller`` sized from declared channels -> a task."""
    terms = build_terms(cfg, student, teacher)
    distiller = Distiller(terms, model_channels(student, "student"), model_channels(teacher, "teacher"))
    return DistillTask(student, teacher, distiller)

