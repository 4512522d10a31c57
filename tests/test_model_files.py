"""One model-file format (detkd-model/2) and one reader; the older cards stay readable; shipped assets."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from detkd.models.facerec import mobilefacenet
from detkd.models.retinaface import retinaface_mnet
from detkd.models.weights import (CARD_FORMAT, card_path, load_model_file, make_card, read_card,
                                  save_model_file, upgrade_card, write_card)

ASSETS = Path(__file__).resolve().parents[1] / "detkd" / "assets"
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # "package.module:QualName"


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


# every shipped model card (the pretrained trunks' detkd-trunk cards: tests/test_pretrain_trunk.py)
@pytest.mark.parametrize("card_file", [p for p in sorted(ASSETS.glob("*.json"))
                                       if not p.stem.startswith("synthshapes_trunk_")], ids=lambda p: p.stem)
def test_shipped_cards_are_current_and_store_no_import_path(card_file):
    raw = json.loads(card_file.read_text())
    assert raw["format"] == CARD_FORMAT and raw["weights"] == card_file.with_suffix(".safetensors").name
    assert not [s for s in _strings(raw) if IMPORT_PATH.match(s)]
    model, card = load_model_file(card_file.with_suffix(".safetensors"))
    assert card == raw and not model.training
    assert card["num_tensors"] == len(model.state_dict())


def _tiny_detector(tmp_path):
    torch.manual_seed(0)
    model = retinaface_mnet(width=0.25)
    out = tmp_path / "det.safetensors"
    card = save_model_file(model, out, task="detection")
    return model, out, card


def test_save_and_load_round_trip(tmp_path):
    model, out, card = _tiny_detector(tmp_path)
    assert card["format"] == CARD_FORMAT and card["model"]["name"] == "retinaface_mnet"
    assert card["task"] == "detection" and card["weights"] == "det.safetensors"
    loaded, card2 = load_model_file(out)
    assert card2 == card == read_card(out)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_old_cards_stay_readable(tmp_path):
    model, out, card = _tiny_detector(tmp_path)
    config = card["model"]
    old_student = {  # detkd.student/1, with an import path that no longer exists
        "format": "detkd.student/1", "weights": out.name, "experiment": "baseline", "task": "detection",
        "model": config, "model_config_type": "detkd.models.gone:RetinaFaceConfig",
        "source_checkpoint": "runs/x/final.pt", "epoch": 3, "global_step": 7, "num_tensors": 300, "num_params": 1,
        "trained_on": "notes are kept",
    }
    old_model = {  # detkd-model/1
        "format": "detkd-model/1", "architecture": config["name"], "config": config, "activation": "relu",
        "anchors": {}, "source": {"path": "/x.pth", "md5": "abc"}, "tensors": 300, "params": 5,
    }
    for old in (old_student, old_model, {"model": config}):
        card_path(out).write_text(json.dumps(old))
        loaded, up = load_model_file(out)
        assert up["format"] == CARD_FORMAT and up["model"] == config and "model_config_type" not in up
        assert torch.equal(loaded.state_dict()["body.stage1.0.0.weight"], model.state_dict()["body.stage1.0.0.weight"])
    assert upgrade_card(old_student)["source"] == {"experiment": "baseline", "checkpoint": "runs/x/final.pt",
                                                   "epoch": 3, "global_step": 7}
    assert upgrade_card(old_student)["trained_on"] == "notes are kept"
    assert upgrade_card(old_model)["source"]["md5"] == "abc" and upgrade_card(old_model)["num_tensors"] == 300


def test_bad_cards_are_clear_errors(tmp_path):
    _, out, card = _tiny_detector(tmp_path)
    card_path(out).write_text(json.dumps({**card, "format": "detkd-model/9"}))
    with pytest.raises(ValueError, match=r"det.json: unknown model card format 'detkd-model/9'"):
        load_model_file(out)
    card_path(out).write_text(json.dumps({"format": CARD_FORMAT, "weights": "x"}))
    with pytest.raises(ValueError, match="det.json: model card has no model config"):
        load_model_file(out)
    card_path(out).write_text("{not json")
    with pytest.raises(ValueError, match="det.json: invalid JSON"):
        load_model_file(out)


def test_face_recognizer_file_may_drop_its_training_head(tmp_path):
    from safetensors.torch import save_file

    from detkd.eval.verification import load_face_model

    torch.manual_seed(0)
    config = {"name": "mobilefacenet", "input_size": 32, "num_classes": 4, "width": 0.25}
    model = mobilefacenet(**{k: v for k, v in config.items() if k != "name"})
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert len(sd) < len(model.state_dict())
    save_file(sd, str(tmp_path / "f.safetensors"))
    write_card(tmp_path / "f.safetensors", make_card(config, sd, task="facerec"))
    with pytest.raises(ValueError, match="missing keys.*head"):
        load_model_file(tmp_path / "f.safetensors")  # strict by default
    face = load_face_model(tmp_path / "f.safetensors")
    assert all(torch.equal(face.state_dict()[k], v) for k, v in sd.items())
