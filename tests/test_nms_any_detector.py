"""``--nms cluster-diou-voting`` on every detector family: each decode takes the ``nms`` post-processing key.

For every registered detector (tiny config) the default decode must equal an explicit ``nms="greedy"``; the
voting preset must give the result of ``cluster_diou_voting_nms`` applied by hand to the candidates that
greedy NMS sees (the same pre-NMS pairs), so both presets run on the model's own candidate set.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detkd.cli import app
from detkd.infer import with_nms
from detkd.models.weights import save_model_file
from detkd.ops import nms as nms_ops
from detkd.registry import MODELS, TINY_CONFIGS, load_all

load_all()
DETECTORS = sorted(n for n in TINY_CONFIGS if n in MODELS and "nms" in getattr(
    MODELS[n](**TINY_CONFIGS[n]), "thresholds", {}))


def _build(name: str):
    torch.manual_seed(0)
    return MODELS[name](**TINY_CONFIGS[name]).eval()


def test_every_detector_family_takes_the_nms_key():
    assert {"gfl", "retinanet", "faster_rcnn_fpn", "retinaface_mnet"} <= set(DETECTORS), DETECTORS


@pytest.mark.parametrize("name", DETECTORS)
def test_decode_with_both_presets(name, monkeypatch):
    model = _build(name)
    images = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1)) * 255
    low = {"score_thresh": 0.0} if "score_thresh" in model.thresholds else {}
    with torch.no_grad():
        out = model(images)
    default = model.postprocess(out, **low)[0]
    greedy = model.postprocess(out, nms="greedy", **low)[0]
    for k in default:
        assert torch.equal(default[k], greedy[k]), k
    # record the candidates the preset receives, and check the voting result against a direct call
    seen = []
    real = nms_ops.cluster_diou_voting_nms

    def spy(boxes, scores, labels, iou_threshold, max_per_img):
        seen.append((boxes.clone(), scores.clone(), labels.clone(), iou_threshold, max_per_img))
        return real(boxes, scores, labels, iou_threshold, max_per_img)

    monkeypatch.setitem(nms_ops.NMS_PRESETS, "cluster-diou-voting", spy)
    voted = model.postprocess(out, nms="cluster-diou-voting", **low)[0]
    assert len(seen) == 1, "the voting preset must be called once per image"
    boxes, scores, labels, thr, cap = seen[0]
    assert boxes.shape[0] > 1, "test needs candidates"
    rb, rs, rl, _ = real(boxes, scores, labels, thr, cap)
    torch.testing.assert_close(voted["boxes"], rb)
    torch.testing.assert_close(voted["scores"], rs)
    assert voted["labels"].dtype == torch.int64 and voted["labels"].numel() == rl.numel()
    assert torch.all(voted["scores"][:-1] >= voted["scores"][1:])
    assert voted["scores"][0] == greedy["scores"][0]  # the best candidate survives either preset
    if "landmarks" in greedy:
        assert voted["landmarks"].shape == (voted["boxes"].shape[0], 5, 2)
    with pytest.raises(ValueError, match="unknown NMS preset 'soft'"):
        model.postprocess(out, nms="soft")


def test_with_nms_protocols():
    p = with_nms("mmdet-voc", "cluster-diou-voting")
    assert p.thresholds == {"nms": "cluster-diou-voting"} and p.name == "mmdet-voc"
    assert with_nms("jwyang-600", "greedy").thresholds["nms_thresh"] == 0.3
    assert with_nms("tdkd-640", "cluster-diou-voting").nms == "cluster-diou-voting"
    assert with_nms("tdkd-640", None).nms is None
    with pytest.raises(ValueError, match="unknown NMS preset"):
        with_nms("tdkd-640", "fast")


def test_cli_detect_nms(tmp_path):
    from detkd.models.gfl import gfl

    torch.manual_seed(0)
    m = gfl(depth=18, num_classes=2, fpn_channels=32, stacked_convs=1, gn_groups=8, nms_pre=50)
    with torch.no_grad():
        m.head.gfl_cls.bias.fill_(0.0)  # scores ~0.5: many overlapping candidates
    save_model_file(m, tmp_path / "g.safetensors")
    cv2.imwrite(str(tmp_path / "a.jpg"), np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8))
    rows = {}
    for preset in ("greedy", "cluster-diou-voting"):
        res = CliRunner().invoke(app, ["detect", str(tmp_path / "a.jpg"), "--weights", str(tmp_path / "g.safetensors"),
                                       "--protocol", "mmdet-gfl", "--format", "coco", "--nms", preset,
                                       "--out-dir", str(tmp_path / preset)])
        assert res.exit_code == 0, res.output
        rows[preset] = json.loads((tmp_path / preset / "detections.json").read_text())
    assert rows["greedy"] and rows["cluster-diou-voting"]
    assert rows["greedy"] != rows["cluster-diou-voting"]  # voting refines the kept boxes
    bad = CliRunner().invoke(app, ["detect", str(tmp_path / "a.jpg"), "--weights", str(tmp_path / "g.safetensors"),
                                   "--protocol", "mmdet-gfl", "--nms", "softnms", "--out-dir", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown NMS preset 'softnms'" in bad.output
