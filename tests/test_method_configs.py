"""The FGFI and DeFeat SynthFaces configs train through the CLI with the shipped teacher (2 iterations)."""
from pathlib import Path

import pytest
from typer.testing import CliRunner

from detkd.cli import app
from detkd.data.synthfaces import write_synthfaces
from detkd.engine.logging import read_jsonl

ASSETS = Path(__file__).resolve().parents[1] / "detkd" / "assets"


@pytest.mark.parametrize("method,extra", [("fgfi", ["distill.fgfi.warmup_iters=0"]),
                                          ("defeat", ["distill.defeat.head=dense"])])
def test_synthfaces_config_trains(method, extra, tmp_path):
    root = write_synthfaces(tmp_path / "sf", seed=3, n_train=4, n_val=2, image_size=128)
    out = tmp_path / "runs"
    args = ["train", f"{method}/retinaface_mnet075_to_mnet025_synthfaces", f"name={method}", "data.name=widerface",
            f"data.root={root}", "data.img_size=128", "train.batch_size=2", "train.max_iters=2", f"train.out_dir={out}",
            "train.progress=false", "train.tensorboard=false", "train.log_every=1", "train.init_weights=",
            f"distill.teacher_weights={ASSETS / 'synthfaces_teacher_mnet075.safetensors'}", *extra, "--no-eval"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"
    rows = [r for r in read_jsonl(out / method / "metrics.jsonl") if any(k.startswith(f"kd.{method}.") for k in r)]
    assert rows, "no distillation losses were logged"
    assert any(v > 0 for k, v in rows[-1].items() if k.startswith(f"kd.{method}."))
