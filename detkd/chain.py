"""Teacher-assistant chains (LD's TA strategy, METHODS.md §3.5): distillation runs in sequence, each stage's
exported student becoming the next stage's teacher.

``run_chain(["ld/ta_r101_r50_voc", "ld/ta_r50_r18_voc"], ["distill.teacher_weights=r101.safetensors"])``:

1. every stage's config is loaded with the same ``overrides`` (type-checked as for ``detkd train``);
2. stage ``i > 0`` gets ``distill.teacher_weights`` = the export of stage ``i - 1`` (whatever the overrides
   said), and its ``distill.teacher`` model config must equal stage ``i - 1``'s ``model`` (checked before any
   training, with an error naming both configs);
3. each stage trains (and evaluates) with ``detkd.experiment.train`` and exports its student to
   ``<run dir>/student.safetensors`` (+ ``.json`` card);
4. one results table (``detkd.reporting.write_results``): ``<out_dir>/chain.json`` / ``chain.md``, a row per
   stage with its teacher, student, final evaluation metrics, steps and wall time.

Only the first stage's teacher comes from outside (``distill.teacher_weights`` in ``overrides``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ChainStage:
    config: str  # config name / file
    cfg: Any  # its ExperimentConfig (overrides applied)


def _arch(model_cfg: Any) -> str:
    """A short description of a model config: ``gfl-r18`` style when it has a depth."""
    name = getattr(model_cfg, "name", type(model_cfg).__name__)
    depth = getattr(model_cfg, "depth", None)
    return f"{name}-r{depth}" if depth else str(name)


def plan_chain(configs: list[str], overrides: list[str] | None = None) -> list[ChainStage]:
    """Load and check the stages (no training): every stage distils; each teacher = the previous student."""
    from detkd.config import load_config

    if len(configs) < 2:
        raise ValueError(f"a distillation chain needs at least 2 configs (teacher -> assistant -> student), "
                         f"got {len(configs)}")
    stages = [ChainStage(c, load_config(c, list(overrides or []))) for c in configs]
    for i, st in enumerate(stages):
        if st.cfg.distill is None:
            raise ValueError(f"chain stage {i + 1} ({st.config}) has no `distill` section: every stage distils")
        if i == 0:
            if not st.cfg.distill.teacher_weights:
                raise ValueError(f"chain stage 1 ({st.config}): give the first teacher, "
                                 "distill.teacher_weights=<file>")
            continue
        prev = stages[i - 1]
        if st.cfg.distill.teacher != prev.cfg.model:
            raise ValueError(
                f"chain stage {i + 1} ({st.config}): its distill.teacher {st.cfg.distill.teacher} is not the model "
                f"that stage {i} ({prev.config}) trains, {prev.cfg.model}")
        if st.cfg.run_dir == prev.cfg.run_dir:
            raise ValueError(f"chain stages {i} and {i + 1} would share the run directory {st.cfg.run_dir}; "
                             "give them different names")
    return stages


def run_chain(configs: list[str], overrides: list[str] | None = None, out_dir: str | Path | None = None,
              evaluate: bool = True) -> dict:
    """Train the stages in order (see the module docstring); returns the chain record (also ``chain.json``)."""
    from detkd.engine.checkpoint import export_student
    from detkd.experiment import train
    from detkd.reporting import git_commit, markdown_table, write_results

    stages = plan_chain(configs, overrides)
    out_dir = Path(out_dir) if out_dir is not None else Path(stages[-1].cfg.train.out_dir) / "chain"
    rows, teacher = [], stages[0].cfg.distill.teacher_weights
    t0 = time.time()
    for i, st in enumerate(stages):
        st.cfg.distill.teacher_weights = str(teacher)
        summary = train(st.cfg, evaluate=evaluate)
        exported = export_student(st.cfg.run_dir, st.cfg.run_dir / "student.safetensors")
        rows.append({"stage": i + 1, "config": st.config, "teacher": _arch(st.cfg.distill.teacher),
                     "teacher_weights": str(teacher), "student": _arch(st.cfg.model), "export": str(exported),
                     "global_step": summary.get("global_step"), "eval": summary.get("eval", {}),
                     "wall_s": summary.get("wall_time_s")})
        teacher = exported
    metrics = sorted({k for r in rows for k in r["eval"]})
    result = {"configs": list(configs), "overrides": list(overrides or []), "stages": rows,
              "wall_s": round(time.time() - t0, 3), "commit": git_commit()}
    table = markdown_table(
        ["stage", "config", "teacher", "student", *metrics, "steps", "wall s"],
        [[r["stage"], r["config"], r["teacher"], r["student"],
          *(f"{100 * r['eval'][m]:.1f}" if m in r["eval"] else "–" for m in metrics), r["global_step"],
          r["wall_s"]] for r in rows])
    lines = ["# Distillation chain", "", f"`detkd distill-chain {' '.join(configs)}`", "", *table, "",
             "Metrics in %, each stage's final evaluation; each stage's teacher is the previous stage's export."]
    js, md = write_results(out_dir, "chain", result, lines)
    result["files"] = [str(js), str(md)]
    return result
