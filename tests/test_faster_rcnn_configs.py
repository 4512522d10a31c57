"""Paper configs of the two-stage family (FGFI VGG16/VGG11 on VOC07, DeFeat R101/R50 on VOC07+12).

The fast test pins the papers' sizes, schedules and batches. The slow test builds every paper model and takes
2 optimizer steps on real ``../shared/data/voc_mini`` images at a reduced size (the images and their VOC XML are
read here with a few lines of ElementTree; the package's VOC reader belongs to the data issue).
"""
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from detkd.config import load_config
from detkd.engine.optim import build_optimizer
from detkd.registry import build_model

VOC = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc_mini"
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
PAPER = ("faster_rcnn/vgg16_voc07", "faster_rcnn/vgg11_voc07", "faster_rcnn/r101_fpn_voc0712",
         "faster_rcnn/r50_fpn_voc0712")


def test_paper_settings():
    v16, v11, r101, r50 = (load_config(c) for c in PAPER)
    assert (v16.model.name, v16.model.depth, v16.model.normalize, v16.model.vgg_frozen) == ("faster_rcnn_vgg", 16, "caffe", 10)
    assert (v16.train.batch_size, v16.optim.lr, v16.train.epochs, v16.sched.milestones) == (1, 1e-3, 7, [5])
    assert (v16.optim.bias_lr_mult, v16.optim.bias_weight_decay, v16.train.clip_grad) == (2.0, 0.0, 10.0)
    assert v16.model.anchor_sizes == [128, 256, 512] and v16.model.rpn_drop_outside and v16.model.roi_batch == 256
    assert (v11.model.depth, v11.model.vgg_frozen, v11.train.batch_size, v11.optim.lr, v11.train.epochs,
            v11.sched.milestones) == (11, 7, 4, 3e-3, 15, [8])
    assert (r101.model.name, r101.model.depth, r101.train.batch_size, r101.optim.lr, r101.optim.weight_decay) == (
        "faster_rcnn_fpn", 101, 16, 0.02, 1e-4)
    assert (r101.train.epochs, r101.sched.milestones, r101.sched.warmup_iters) == (12, [9], 200)
    assert r101.model.rpn_box_beta == 0.0 and r101.model.roi_box_beta == 0.0 and r101.model.roi_batch == 512
    assert (r50.model.depth, r50.optim.lr, r50.eval.protocol) == (50, 0.01, "mmdet-600")
    for c in ("faster_rcnn/fpn_lite_synthshapes", "faster_rcnn/vgg_lite_synthshapes"):
        m = build_model(load_config(c).model)
        assert m.config.num_classes == 12  # SYNTHSHAPES_CLASSES


def _voc_batch(n: int, short: int):
    if not VOC.is_dir():
        pytest.skip(f"voc_mini not available: {VOC}")
    from detkd.data.image import read_image
    import cv2

    ids = (VOC / "ImageSets" / "Main" / "val.txt").read_text().split()[:n]
    images, targets = [], []
    for i in ids:
        img = read_image(VOC / "JPEGImages" / f"{i}.jpg")
        s = short / min(img.shape[:2])
        img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
        boxes, labels = [], []
        for obj in ET.parse(VOC / "Annotations" / f"{i}.xml").findall("object"):
            bb = obj.find("bndbox")
            boxes.append([(float(bb.find(k).text) - 1) * s for k in ("xmin", "ymin", "xmax", "ymax")])
            labels.append(VOC_CLASSES.index(obj.find("name").text.strip()) + 1)
        images.append(torch.from_numpy(img).permute(2, 0, 1).float())
        targets.append({"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)})
    h = max(im.shape[1] for im in images)
    w = max(im.shape[2] for im in images)
    h, w = -(-h // 32) * 32, -(-w // 32) * 32
    batch = torch.zeros(len(images), 3, h, w)
    for k, im in enumerate(images):
        batch[k, :, : im.shape[1], : im.shape[2]] = im
    return batch, targets, [tuple(im.shape[1:]) for im in images]


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_paper_config_two_steps_on_voc_mini(name):
    torch.manual_seed(0)
    cfg = load_config(name)
    images, targets, sizes = _voc_batch(2, 224)
    model = build_model(cfg.model)
    if model.is_fpn:
        # frozen BN with random statistics is an identity, so 33 random residual blocks (R101) blow activations up
        # to overflow; real runs start from ImageNet weights (train.backbone_init). Stand-in: torchvision's
        # zero_init_residual (last BN scale of every block = 0).
        for name, buf in model.backbone.body.named_buffers():
            if name.endswith("bn3.weight"):  # FrozenBatchNorm2d keeps its scale as a buffer
                buf.zero_()
    model.train()
    opt = build_optimizer(cfg.optim, model)
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    for _ in range(2):
        out = model(images, targets, image_sizes=sizes)
        loss = sum(out.losses.values())
        assert torch.isfinite(loss), out.losses
        opt.zero_grad()
        loss.backward()
        if cfg.train.clip_grad:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.train.clip_grad)
        opt.step()
    changed = [k for k, v in model.named_parameters() if v.requires_grad and not torch.equal(v, before[k])]
    assert "roi_heads.box_predictor.cls_score.weight" in changed and any(k.startswith("backbone.") for k in changed)


@pytest.mark.slow
def test_synthshapes_two_steps_and_voc_eval_end_to_end(tmp_path):
    """SynthShapes samples -> padding collate (image_sizes) -> 2 steps of the lite config's model -> the batched
    evaluation path (``torchvision-320`` protocol, VOC07 mAP evaluator)."""
    from detkd.data.detection import DetectionEvalSet
    from detkd.data.loader import collate_detection
    from detkd.data.synthshapes import SYNTHSHAPES_CLASSES, synthshapes
    from detkd.eval.base import build_evaluator
    from detkd.experiment import evaluate_detector

    torch.manual_seed(0)
    ds = synthshapes(root=str(tmp_path / "ss"), split="train", n_train=4, n_val=2, seed=0)
    cfg = load_config("faster_rcnn/fpn_lite_synthshapes")
    model = build_model(cfg.model)
    images, targets, metas = collate_detection([ds[i] for i in range(4)])
    sizes = [m["image_size"] for m in metas]
    assert len(set(sizes)) > 1  # keep-ratio resize: a really padded batch
    opt = build_optimizer(cfg.optim, model)
    for _ in range(2):
        loss = sum(model(images, targets, image_sizes=sizes).losses.values())
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ev = DetectionEvalSet(ds.records, SYNTHSHAPES_CLASSES)
    res = evaluate_detector(model, ev, build_evaluator("voc", dataset=ev), cfg.eval.protocol, progress=False)
    assert 0.0 <= res["mAP"] <= 1.0 and len([k for k in res if k.startswith("AP/")]) == 12
