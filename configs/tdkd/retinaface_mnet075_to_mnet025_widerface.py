"""TDKD paper recipe on WIDER FACE (METHODS.md §1.7, §1.8).

Student RetinaFace-MobileNet0.25 (ReLU) initialised from a converged student (the paper's `base.pth`,
e.g. ../shared/data/weights/retinaface_mnet025_relu_tdkd_base.pth), fine-tuned for 80 more epochs at 640,
batch 32, SGD lr 2e-2 ×0.1 at 55/68, with TDKD (feature weight 1 × dynamic scale, probability weight 50,
neg:pos 3). Teacher: width 0.75 + task convs, trained by `retinaface/mnet075_tasks_widerface`.
Report it against `retinaface/mnet025_widerface_tdkd` continued for the same 80 epochs (schedule-matched).
"""
from detkd.config import load_config
from detkd.distill.distiller import DistillConfig
from detkd.distill.tdkd import TDKDConfig


def config():
    cfg = load_config("retinaface/mnet025_widerface_tdkd")
    cfg.name = "tdkd_mnet075_to_mnet025_widerface"
    cfg.train.init_weights = "../shared/data/weights/retinaface_mnet025_relu_tdkd_base.pth"
    teacher = load_config("retinaface/mnet075_tasks_widerface").model
    cfg.distill = DistillConfig(
        teacher=teacher,
        teacher_weights="{train.out_dir}/mnet075_tasks_widerface/student.safetensors",
        methods=["tdkd"],
        tdkd=TDKDConfig(feat_weight=1.0, prob_weight=50.0, scale="dynamic", neg_ratio=3),
    )
    return cfg
