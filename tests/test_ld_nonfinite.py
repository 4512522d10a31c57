"""NaN / inf in the teacher's outputs stops LD training with the step number (the trainer's non-finite guard)."""
from __future__ import annotations

import math

import pytest
import torch

from detkd.config import load_config
from detkd.engine.loop import NonFiniteLossError
from detkd.experiment import train
from detkd.models.weights import save_model_file
from detkd.registry import build_model


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_teacher_outputs_stop_ld_training_with_the_step(tmp_path, bad):
    torch.manual_seed(0)
    teacher = build_model(load_config("gfl/r18_lite_synthshapes").model)
    with torch.no_grad():
        teacher.head.gfl_reg.bias.fill_(bad)  # every box_dist logit of the teacher is NaN / inf
    save_model_file(teacher, tmp_path / "t.safetensors")
    cfg = load_config("ld/self_ld_lite_synthshapes", [
        f"data.root={tmp_path / 'ss'}", "data.n_train=4", "data.n_val=2", "data.img_size=96",
        f"train.out_dir={tmp_path / 'runs'}", "train.batch_size=2", "train.max_nonfinite=2", "train.progress=false",
        "train.tensorboard=false", f"distill.teacher_weights={tmp_path / 't.safetensors'}"])
    with pytest.raises(NonFiniteLossError, match=r"2 consecutive steps .*global step 2.*kd\.ld\.ld"):
        train(cfg, evaluate=False)
