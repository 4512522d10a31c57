"""Config loading, type-checked a.b=c overrides and close-match errors."""
from dataclasses import dataclass, field

import pytest

from detkd.config import ConfigError, ExperimentConfig, apply_overrides, load_config, parse_value


@dataclass
class _Model:
    name: str = "toy"
    width: float = 0.25
    task_convs: bool = False
    min_sizes: list[list[int]] = field(default_factory=lambda: [[16, 32], [64, 128]])


def _cfg():
    return ExperimentConfig(name="t", model=_Model())


def test_overrides_are_typed():
    cfg = apply_overrides(_cfg(), ["optim.lr=0.02", "model.task_convs=true", "train.epochs=3",
                                   "sched.milestones=[55,68]", "model.min_sizes=[[8,16],[32,64]]"])
    assert cfg.optim.lr == 0.02 and cfg.model.task_convs is True and cfg.train.epochs == 3
    assert cfg.sched.milestones == [55.0, 68.0]
    assert cfg.model.min_sizes == [[8, 16], [32, 64]]


def test_bad_type_names_key():
    with pytest.raises(ConfigError, match="train.epochs"):
        apply_overrides(_cfg(), ["train.epochs=ten"])
    with pytest.raises(ConfigError, match="one of"):
        apply_overrides(_cfg(), ["optim.name=adam"])


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match="optim.lr"):
        apply_overrides(_cfg(), ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="model.width"):
        apply_overrides(_cfg(), ["model.widht=0.5"])
    with pytest.raises(ConfigError, match="a.b=c"):
        apply_overrides(_cfg(), ["optim.lr"])


def test_parse_optional_and_tuple():
    assert parse_value("none", int | None) is None
    assert parse_value("3", int | None) == 3
    assert parse_value("0.9,0.99", tuple[float, float]) == (0.9, 0.99)


def test_missing_config_file_suggests(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.py")


def test_config_file_without_config_function(tmp_path):
    p = tmp_path / "c.py"
    p.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="config\\(\\)"):
        load_config(p)


def test_out_dir_override_moves_the_paths_under_it():
    """Issue 18: `train.out_dir=elsewhere` moves a face-recognition student's teacher, cache and init paths."""
    cfg = load_config("facerec/margin_distillation_mobilefacenet_synthids", ["train.out_dir=/tmp/elsewhere"])
    assert cfg.distill.teacher_weights == "/tmp/elsewhere/teacher_iresnet18_synthids/final.pt"
    assert cfg.distill.cache_path == "/tmp/elsewhere/teacher_cache_synthids.pt"
    cfg = load_config("facerec/triplet_cos_mobilefacenet_synthids", ["train.out_dir=o"])
    assert cfg.train.init_weights == "o/arcface_mobilefacenet_synthids/final.pt"
    assert load_config("facerec/arcface_mobilefacenet_synthids").train.out_dir == "runs/facerec"
    assert load_config("tdkd/retinaface_mnet075_to_mnet025_widerface", ["train.out_dir=o"]).distill.teacher_weights \
        == "o/mnet075_tasks_widerface/student.safetensors"
    # a path given explicitly stays as given
    cfg = load_config("facerec/margin_distillation_mobilefacenet_synthids",
                      ["train.out_dir=o", "distill.teacher_weights=t/final.pt"])
    assert cfg.distill.teacher_weights == "t/final.pt"
