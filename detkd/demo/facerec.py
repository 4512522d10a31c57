"""``detkd demo facerec``: face recognition on SynthIDs, teacher -> ArcFace student -> MarginDistillation and
its four baselines (METHODS.md §5.5), one seed.

The recipes are ``configs/facerec/*_synthids.py`` (as ``benchmarks/facerec_kd.py`` runs them, which pairs 3
seeds), relocated under the demo directory and shortened to the demo budget (``FacerecSchedule``). The teacher
is the shipped ``detkd/assets/synthids_teacher_iresnet18.safetensors`` when there is one, else it is trained here
with the short schedule. Every export is scored with the SynthIDs verification protocol (``val.bin``: 600 pairs
of unseen identities, 10-fold accuracy, TAR@FAR=1e-2).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from detkd.demo.common import ASSETS, PartResult, loss_figure, shipped, train_export

TEACHER_ASSET = ASSETS / "synthids_teacher_iresnet18.safetensors"
TEACHER_CFG = "facerec/teacher_iresnet18_synthids"
# the ArcFace student first (the triplet runs fine-tune it), then the other objectives, triplets last
STUDENTS = ("arcface", "angular", "margin_t", "margin_distillation", "triplet_l2", "triplet_cos")
TITLES = {"teacher": "teacher IResNet-18 (1/2 width)", "arcface": "ArcFace student (MobileFaceNet 1/2)",
          "angular": "Angular distillation", "margin_t": "Margin-based with T", "margin_distillation":
          "MarginDistillation", "triplet_l2": "Triplet distillation L2", "triplet_cos": "Triplet distillation cos"}


@dataclass
class FacerecSchedule:
    """Epochs of each run. The configs' recipe is 8 epochs (teacher and students; 24 steps of 64 images) and 15
    triplet epochs (4 bags each). Sized from steps timed at OMP_NUM_THREADS=1 on the 2-core machine while other
    jobs ran: a student step 0.22 s, a teacher step 2.0 s (so 8 teacher epochs, ~6 min, do not fit). Idle and
    with 2 threads about half that: 6 student epochs ~17 s per objective (4 of them, ~70 s), the two triplet
    fine-tunes at the recipe's 15 epochs ~25 s, a teacher trained here (no shipped one) 3 epochs ~70 s, plus
    SynthIDs (6 s), the teacher cache and 7 verifications: ~3 min, the part's share of `make demo`. A shipped
    ``TEACHER_ASSET`` saves the teacher's ~70 s and is the recipe's 8-epoch teacher."""

    teacher_epochs: int = 3
    student_epochs: int = 6
    triplet_epochs: int = 15
    max_iters: int = 0  # >0: stop every run after this many iterations (smoke test)
    # SynthIDs size: the configs' (64 identities x 24 images, 600 verification pairs); the triplet bags need 16
    n_ids: int = 64
    imgs_per_id: int = 24
    n_pairs: int = 600

    @classmethod
    def quick(cls):
        return cls(teacher_epochs=1, student_epochs=1, triplet_epochs=1, max_iters=2, n_ids=16, imgs_per_id=8,
                   n_pairs=40)


def epochs_overrides(epochs: int, step_schedule: bool) -> list[str]:
    """``train.epochs`` and, for the step schedule, its decays at the recipe's 60 % and 85 % of training."""
    out = [f"train.epochs={epochs}"]
    return out + [f"sched.milestones=[{0.6 * epochs:g},{0.85 * epochs:g}]"] if step_schedule else out


def verify(weights: Path, val_bin: Path) -> dict:
    from detkd.experiment_facerec import verification_eval
    from detkd.models.weights import load_model_file

    model, _ = load_model_file(weights, allow_missing=("head.",))
    res = verification_eval(str(val_bin))(model, None)
    # reached: the FAR of the TAR is 1e-2 (EVAL.md §3); embeddings that do not separate the pairs reach none
    return {"acc": res["acc"], "tar_far_1e-2": res["tar_far_1e-2"], "tar_reached": res["tar_far_1e-2_reached"]}


def run_facerec(out_dir: Path, quick: bool = False, seed: int = 0, schedule: FacerecSchedule | None = None,
                teacher_asset: Path = TEACHER_ASSET) -> dict:
    """Run the part under ``out_dir``; returns ``{model: {"acc", "tar_far_1e-2", "tar_reached"}}`` and writes
    ``results.json`` and ``part.json``."""
    from detkd.data.synthids import write_synthids

    t_start = time.time()
    out_dir = Path(out_dir)
    sched = schedule or (FacerecSchedule.quick() if quick else FacerecSchedule())
    data_root = out_dir / "synthids48"
    n_ids = sched.n_ids
    write_synthids(data_root, seed=0, img_size=48, n_train_ids=n_ids, imgs_per_id=sched.imgs_per_id,
                   n_pairs=sched.n_pairs)
    val_bin = data_root / "val.bin"
    # data.synthids=false: the set is written above (the configs' own writer would rewrite a tiny one at full size)
    data = [f"data.root={data_root / 'train'}", f"data.val_bin={val_bin}", "data.synthids=false",
            f"model.num_classes={n_ids}",
            f"train.seed={seed}", f"train.max_iters={sched.max_iters}"]
    if teacher_asset.is_file() and not quick:
        teacher = shipped(teacher_asset, out_dir / "teacher" / "student.safetensors", "teacher",
                          f"detkd train {TEACHER_CFG} (8 epochs, about 10 min on 2 cores)")
    else:
        teacher, _ = train_export(TEACHER_CFG, "teacher", out_dir,
                                  [*data, *epochs_overrides(sched.teacher_epochs, True)])
    kd = [f"distill.teacher_weights={teacher.weights}", f"distill.cache_path={out_dir / 'teacher_cache.pt'}",
          f"distill.teacher.num_classes={n_ids}"]
    models = [teacher]
    for method in STUDENTS:
        ovr = [*data, *kd]
        if method.startswith("triplet"):
            ovr += [*epochs_overrides(sched.triplet_epochs, False), f"train.init_weights={models[1].weights}"]
        else:
            ovr += epochs_overrides(sched.student_epochs, True)
        models.append(train_export(f"facerec/{method}_mobilefacenet_synthids", method, out_dir, ovr,
                                   distils=method != "arcface")[0])
    results = {m.name: verify(m.weights, val_bin) for m in models}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    loss = loss_figure(models[1:], out_dir / "loss_curves.png")
    PartResult(
        key="facerec", title="Face recognition on SynthIDs (MarginDistillation and its baselines)",
        intro=(f"{'Shipped' if teacher.metrics is None else 'Trained here'} ArcFace teacher, the ArcFace "
               f"MobileFaceNet student ({sched.student_epochs} epochs), the distillations ({sched.student_epochs} "
               f"epochs; the triplet ones fine-tune the ArcFace student {sched.triplet_epochs} epochs). "
               f"Verification on SynthIDs val.bin (unseen identities), in %; seed {seed}, shortened recipes: "
               "benchmarks/facerec_kd.py pairs 3 seeds of the full ones."),
        header=["model", "accuracy", "TAR@FAR=1e-2"],
        rows=[[TITLES[n], f"{100 * r['acc']:.1f}", f"{100 * r['tar_far_1e-2']:.1f}" if r["tar_reached"] else
               "FAR 1e-2 not reached"] for n, r in results.items()],
        commands=[m.command for m in models], figures=[str(loss.relative_to(out_dir))] if loss else [],
        wall_s=time.time() - t_start,
    ).save(out_dir)
    print(f"\nSynthIDs verification, seed {seed}: " + "; ".join(
        f"{n} acc {100 * r['acc']:.1f} TAR {100 * r['tar_far_1e-2']:.1f}" for n, r in results.items()))
    return results
