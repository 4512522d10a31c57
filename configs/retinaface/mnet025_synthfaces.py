"""RetinaFace-MobileNet0.25 student on SynthFaces, sized for 2 CPU cores (the demo's baseline).

Same losses and matcher as the paper recipe (METHODS.md §1.6); 256 training input (random square crops of
the 320-pixel scenes, METHODS.md §1.5) and a short schedule: 30 epochs = 1,140 steps, about 6 minutes on
2 idle cores. ReLU everywhere, as in TDKD, so the student matches its teacher's activation.
"""
from detkd.config import DetEvalConfig, ExperimentConfig, OptimConfig, ScheduleConfig, SynthFacesDataConfig, TrainConfig
from detkd.models.retinaface import RetinaFaceConfig


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="mnet025_synthfaces",
        model=RetinaFaceConfig(width=0.25, activation="relu"),
        data=SynthFacesDataConfig(root="data/synthfaces", img_size=256),
        optim=OptimConfig(name="sgd", lr=0.02, momentum=0.9, weight_decay=5e-4),
        # warm-up keeps the first steps of a from-scratch MobileNet stable; cosine to 1% over the run
        sched=ScheduleConfig(name="cosine", warmup_iters=50, min_lr_factor=0.01),
        train=TrainConfig(epochs=30, batch_size=16, log_every=10),
        eval=DetEvalConfig(protocol="biubug6-origin"),
    )
