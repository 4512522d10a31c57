"""The VOC / COCO paper configs carry typed data sections that `detkd train` builds: VOC07(+12) roots and splits,
short side / long-side cap, COCO annotation files and multi-scale sizes."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detkd.config import COCODataConfig, VOCDataConfig, load_config
from detkd.errors import UserError
from detkd.experiment import build_train_set, build_val_set

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VOC_MINI = SHARED / "voc_mini"
need_voc = pytest.mark.skipif(not (VOC_MINI / "Annotations").is_dir(),
                              reason=f"real VOC images not found at {VOC_MINI}")

VOC_CONFIGS = {  # config -> number of VOC roots (07 or 07+12)
    "faster_rcnn/vgg16_voc07": 1, "faster_rcnn/vgg11_voc07": 1, "fgfi/vgg16_to_vgg11_voc07": 1,
    "faster_rcnn/r101_fpn_voc0712": 2, "faster_rcnn/r50_fpn_voc0712": 2, "defeat/r101_to_r50_fpn_voc0712": 2,
    "retinanet/defeat_r101_voc0712": 2, "retinanet/defeat_r50_voc0712": 2, "gfl/ld_r101_voc0712": 2,
    "gfl/ld_r18_voc0712": 2, "ld/ld_r101_r18_voc": 2,
}
COCO_CONFIGS = {"gfl/ld_r101_coco_2x": True, "gfl/ld_r18_coco_1x": False, "ld/ld_r101_r18_coco": False}


@pytest.mark.parametrize("name", VOC_CONFIGS)
def test_voc_paper_configs(name):
    data = load_config(name).data
    assert isinstance(data, VOCDataConfig)
    assert [Path(r).name for r in data.roots] == ["VOC2007", "VOC2012"][: VOC_CONFIGS[name]]
    assert (data.img_size, data.max_long, data.splits) == (600, 1000, ["trainval"])


@pytest.mark.parametrize("name", COCO_CONFIGS)
def test_coco_paper_configs(name):
    data = load_config(name).data
    assert isinstance(data, COCODataConfig) and (data.img_size, data.max_long) == (800, 1333)
    assert data.short == (list(range(480, 961, 32)) if COCO_CONFIGS[name] else [])


@need_voc
def test_voc_config_builds_train_and_val_sets():
    cfg = load_config("faster_rcnn/r101_fpn_voc0712",
                      [f"data.roots=[{VOC_MINI}]", "data.splits=[val]", "data.val_splits=[val]", "data.augment=false"])
    train, val = build_train_set(cfg), build_val_set(cfg)
    assert len(train) == len(val) > 0
    image, target, meta = train[0]
    assert min(image.shape[-2:]) == 600 or max(image.shape[-2:]) == 1000  # short 600, long side <= 1000
    assert max(image.shape[-2:]) <= 1000 and target["boxes"].shape[1] == 4 and len(target["labels"]) > 0
    with pytest.raises((UserError, FileNotFoundError), match="nowhere"):
        build_train_set(load_config("faster_rcnn/vgg16_voc07", ["data.roots=[/nowhere/VOC2007]"]))


def test_coco_config_builds_train_and_val_sets(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 320, "height": 240},
              {"id": 2, "file_name": "b.jpg", "width": 200, "height": 300}]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 20, 50, 40], "area": 2000, "iscrowd": 0}]
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "train"}]}))
    for im in images:
        cv2.imwrite(str(tmp_path / im["file_name"]), np.full((im["height"], im["width"], 3), 127, np.uint8))
    over = [f"data.ann_file={ann}", f"data.images_dir={tmp_path}", f"data.val_ann_file={ann}",
            f"data.val_images_dir={tmp_path}", "data.augment=false"]
    cfg = load_config("gfl/ld_r18_coco_1x", over)
    train, val = build_train_set(cfg), build_val_set(cfg)
    assert len(train) == 1 and len(val) == 2  # training drops the image without boxes; evaluation keeps it
    image, target, _ = train[0]
    assert min(image.shape[-2:]) == 800 and target["boxes"].shape == (1, 4)
