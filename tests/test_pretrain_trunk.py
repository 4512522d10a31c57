"""Trunk pretraining on SynthShapes crops (``detkd.pretrain_trunk``) and loading the trunk into every family."""
import json

import numpy as np
import pytest
import torch

from detkd.registry import build_model
from detkd.models.faster_rcnn import FasterRCNNConfig
from detkd.models.gfl import GFLConfig
from detkd.models.rcnn_weights import load_backbone_init
from detkd.models.retinanet import RetinaNetConfig
from detkd.models.weights import load_resnet_trunk
from detkd.pretrain_trunk import CLASSES, PretrainConfig, TrunkSpec, save_trunk, shape_crops, train_trunk


@pytest.fixture(scope="module")
def crops():
    return shape_crops(12, size=32, workers=1, progress=False)


def test_crops_are_labelled_objects_and_background_and_deterministic(crops):
    x, y = crops
    assert x.dtype == np.uint8 and x.shape[1:] == (32, 32, 3) and len(x) == len(y)
    assert (y == 0).any() and (y > 0).any() and y.max() < len(CLASSES)
    x2, y2 = shape_crops(12, size=32, workers=1, progress=False)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = shape_crops(12, size=32, seed=1, workers=1, progress=False)
    assert len(x3) != len(x) or not np.array_equal(x3, x)


def test_crops_come_from_scenes_no_detector_sees():
    """The pretraining split's scene i differs from train scene i and val scene i."""
    from detkd.data.synthshapes import preset_config, render_scene
    from detkd.pretrain_trunk import PRETRAIN_SPLIT

    cfg = preset_config("cpu")
    img, _ = render_scene(np.random.default_rng([0, PRETRAIN_SPLIT, 0]), cfg)
    for split in (0, 1):
        other, _ = render_scene(np.random.default_rng([0, split, 0]), cfg)
        assert img.shape != other.shape or not np.array_equal(img, other)


@pytest.mark.parametrize("family", ["gfl", "retinanet", "faster_rcnn_fpn"])
def test_resnet_trunk_trains_saves_and_loads_into_each_family(tmp_path, crops, family):
    spec = TrunkSpec("resnet", 18, 0.125)
    net, card = train_trunk(spec, PretrainConfig(epochs=1, batch_size=16, size=32), crops, progress=False,
                            log=lambda *_: None)
    assert 0 <= card["val_acc"] <= 1 and card["n_train"] + card["n_val"] == len(crops[0])
    out = save_trunk(net, card, tmp_path / "t.safetensors")
    assert json.loads(out.with_suffix(".json").read_text())["trunk"]["width"] == 0.125
    if family == "faster_rcnn_fpn":
        model = build_model(FasterRCNNConfig.fpn(depth=18, width=0.125, num_classes=12, norm="bn",
                                                 trainable_layers=5, fpn_channels=32))
        load_backbone_init(model, out)
        body = model.backbone.body
    else:
        cfg = (GFLConfig(depth=18, width=0.125, num_classes=12, fpn_channels=32, stacked_convs=1, gn_groups=8)
               if family == "gfl" else RetinaNetConfig(depth=18, width=0.125, num_classes=12, fpn_channels=32))
        model = build_model(cfg)
        load_resnet_trunk(model, out)
        body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, net.layer3[0].conv1.weight)
    assert torch.equal(body.bn1.running_mean, net.bn1.running_mean)


def test_trunk_of_another_width_fails_naming_the_shapes(tmp_path, crops):
    net, card = train_trunk(TrunkSpec("resnet", 18, 0.125), PretrainConfig(epochs=1, batch_size=16, size=32),
                            crops, progress=False, log=lambda *_: None)
    out = save_trunk(net, card, tmp_path / "t.safetensors")
    model = build_model(GFLConfig(depth=18, width=0.25, num_classes=12, fpn_channels=32, stacked_convs=1,
                                  gn_groups=8))
    with pytest.raises(ValueError, match=r"t\.safetensors.*shape mismatches.*conv1\.weight"):
        load_resnet_trunk(model, out)


def test_vgg_trunk_without_classifier_loads_into_faster_rcnn_vgg(tmp_path, crops):
    net, card = train_trunk(TrunkSpec("vgg", 11, 0.125), PretrainConfig(epochs=1, batch_size=16, size=32), crops,
                            progress=False, log=lambda *_: None)
    out = save_trunk(net, card, tmp_path / "v.safetensors")
    model = build_model(FasterRCNNConfig.vgg(depth=11, width=0.125, num_classes=12, vgg_bn=True,
                                             hidden=64))
    keys = load_backbone_init(model, out)
    assert keys and all(k.startswith("backbone.") for k in keys)
    assert torch.equal(model.backbone[0].weight, net.features[0].weight)


def test_not_a_resnet_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"features.0.weight": torch.zeros(4, 3, 3, 3)}, str(tmp_path / "v.safetensors"))
    model = build_model(GFLConfig(depth=18, width=0.125, num_classes=12, fpn_channels=32, stacked_convs=1,
                                  gn_groups=8))
    with pytest.raises(ValueError, match="not a torchvision ResNet"):
        load_resnet_trunk(model, tmp_path / "v.safetensors")


def test_shipped_trunks_exist_with_cards_and_unknown_names_fail():
    from detkd.pretrain_trunk import shipped_trunk

    for name, width in (("r18_w025", 0.25), ("r18_w05", 0.5), ("vgg11_w025", 0.25), ("vgg16_w0375", 0.375)):
        with open(shipped_trunk(name).replace(".safetensors", ".json")) as f:
            card = json.load(f)
        assert card["trunk"]["width"] == width and card["val_acc"] > card["chance"]
    with pytest.raises(FileNotFoundError, match="no shipped trunk 'r50'.*r18_w025"):
        shipped_trunk("r50")


def test_cli_refuses_an_output_that_is_not_safetensors(tmp_path):
    from typer.testing import CliRunner

    from detkd.cli import app

    res = CliRunner().invoke(app, ["pretrain-trunk", str(tmp_path / "t.pt")])
    assert res.exit_code == 2 and "must end in .safetensors" in res.output


def test_trunk_for_finds_the_shipped_trunk_of_a_models_width_or_none():
    from detkd.config import load_config
    from detkd.pretrain_trunk import trunk_for

    for config in ("gfl/r18_half_teacher_synthshapes", "faster_rcnn/vgg16_teacher_synthshapes",
                   "faster_rcnn/fpn_lite_synthshapes"):
        cfg = load_config(config)
        assert trunk_for(cfg.model) == cfg.train.backbone_init
    assert trunk_for(GFLConfig(depth=50, width=1.0)) == ""


def test_a_width_override_without_its_trunk_fails_at_start_naming_the_key():
    from detkd.config import load_config
    from detkd.errors import UserError
    from detkd.experiment import build_task

    with pytest.raises(UserError, match=r"shape mismatches.*train\.backbone_init=") as e:
        build_task(load_config("gfl/r18_lite_synthshapes", ["model.width=0.125"]))
    assert e.value.key == "train.backbone_init"
    build_task(load_config("gfl/r18_lite_synthshapes", ["model.width=0.125", "train.backbone_init="]))
