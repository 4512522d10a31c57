"""Generic detection protocols: geometry of torchvision / mmdet test pipelines and `detkd detect --format coco`."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from detkd.cli import app
from detkd.infer_detector import get_protocol, preprocess
from detkd.models.gfl import gfl
from detkd.models.weights import save_model_file


def test_torchvision_geometry():
    img = np.full((683, 1024, 3), 7, np.uint8)
    x, size, (sx, sy) = preprocess(img, "torchvision")
    assert size == (800, 1199) and x.shape == (1, 3, 800, 1216)  # scale 800/683, padded to 32
    assert x[0, :, 0, 1200].tolist() == pytest.approx([123.675, 116.28, 103.53], abs=1e-4)  # mean colour pad
    assert x[0, :, 5, 5].tolist() == pytest.approx([7.0] * 3)
    assert sx == pytest.approx(1024 / 1199) and sy == pytest.approx(683 / 800)


def test_mmdet_geometry():
    img = np.zeros((683, 1024, 3), np.uint8)
    x, size, (sx, sy) = preprocess(img, "mmdet-gfl")
    assert size == (800, 1199) and x.shape == (1, 3, 800, 1216)
    x, size, _ = preprocess(np.zeros((500, 2000, 3), np.uint8), "mmdet-gfl")  # long side caps: 1333/2000
    assert size == (int(500 * 1333 / 2000 + 0.5), 1333)
    with pytest.raises(ValueError, match="did you mean 'torchvision'"):
        get_protocol("torchvison")


def test_detect_coco_with_gfl(tmp_path):
    torch.manual_seed(0)
    m = gfl(depth=18, num_classes=2, fpn_channels=32, stacked_convs=1, gn_groups=8, nms_pre=50)
    with torch.no_grad():
        m.head.gfl_cls.bias.fill_(0.0)  # scores ~0.5: every image has detections
    save_model_file(m, tmp_path / "g.safetensors")
    import cv2
    for name in ("a", "b"):
        cv2.imwrite(str(tmp_path / f"{name}.jpg"), np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8))
    res = CliRunner().invoke(app, ["detect", str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), "--weights",
                                   str(tmp_path / "g.safetensors"), "--protocol", "mmdet-gfl", "--format", "coco",
                                   "--out-dir", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert {r["image_id"] for r in rows} == {"a", "b"} and {r["category_id"] for r in rows} <= {1, 2}
    per = [r for r in rows if r["image_id"] == "a"]
    assert 0 < len(per) <= 100
    for r in per:  # boxes in original 80 x 60 pixels
        x, y, w, h = r["bbox"]
        assert -1e-3 <= x and x + w <= 80 + 1e-3 and y + h <= 60 + 1e-3 and r["score"] > 0.05
    bad = CliRunner().invoke(app, ["detect", str(tmp_path / "a.jpg"), "--weights", str(tmp_path / "g.safetensors"),
                                   "--protocol", "mmdet-gfl", "--format", "widerface-txt", "--out-dir", str(tmp_path)])
    assert bad.exit_code == 2 and "png, coco or voc" in bad.output
    res = CliRunner().invoke(app, ["detect", str(tmp_path / "a.jpg"), "--weights", str(tmp_path / "g.safetensors"),
                                   "--protocol", "mmdet-gfl", "--format", "voc", "--out-dir", str(tmp_path / "voc")])
    assert res.exit_code == 0, res.output
    rows = [line.split() for f in (tmp_path / "voc").iterdir() for line in f.read_text().splitlines()]
    assert rows and all(r[0] == "a" and len(r) == 6 for r in rows)
    assert len(rows) == len(per)  # the same detections as the COCO file
    res = CliRunner().invoke(app, ["detect", str(tmp_path / "a.jpg"), "--weights", str(tmp_path / "g.safetensors"),
                                   "--protocol", "mmdet-gfl", "--format", "png", "--out-dir", str(tmp_path / "png")])
    assert res.exit_code == 0, res.output
    assert cv2.imread(str(tmp_path / "png" / "a.png")).shape == (60, 80, 3)  # drawn by infer.draw_detections
