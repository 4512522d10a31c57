"""Foreign Faster R-CNN checkpoints (torchvision, faster-rcnn.pytorch) and ImageNet trunks, with torchvision
as the oracle on real images from ../shared (skipped without them)."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18, resnet34
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.vgg import cfgs, make_layers

from detkd.infer_detector import DetProtocol, detect_image
from detkd.models.faster_rcnn import faster_rcnn_fpn, faster_rcnn_fpn_lite, faster_rcnn_vgg
from detkd.models.rcnn_weights import (import_jwyang_fasterrcnn, import_torchvision_fasterrcnn, load_backbone_init,
                                       torchvision_fasterrcnn_state)
from detkd.models.weights import check_state, load_model_file

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VOC_IMAGES = SHARED / "voc_mini" / "JPEGImages"


def _real_images(n):
    if not VOC_IMAGES.is_dir():
        pytest.skip(f"real images not available: {VOC_IMAGES}")
    from detkd.data.image import read_image

    paths = sorted(VOC_IMAGES.glob("*.jpg"))[:n]
    return paths, [read_image(p) for p in paths]


def _seed_predictor(tv, image):
    """Give a random torchvision model confident, spread class scores (random init scores ~1/K, no detections)."""
    hidden = {}
    hook = tv.roi_heads.box_head.register_forward_hook(lambda mod, i, o: hidden.setdefault("h", o))
    with torch.no_grad():
        tv([image])
    hook.remove()
    with torch.no_grad():
        scale = hidden["h"].pow(2).mean().sqrt() * hidden["h"].shape[1] ** 0.5
        tv.roi_heads.box_predictor.cls_score.weight.normal_(0, 2.0 / float(scale))
        tv.roi_heads.box_predictor.cls_score.bias.zero_()


def _compare(ref, ours):
    assert len(ref["boxes"]) == len(ours["boxes"]) > 0
    assert torch.equal(ref["labels"], ours["labels"])
    assert (ref["boxes"] - ours["boxes"]).abs().max() <= 0.01
    assert (ref["scores"] - ours["scores"]).abs().max() <= 1e-5


# ----------------------------------------------------------------------------------------- torchvision


def test_torchvision_r50_state_dict_maps_one_to_one():
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    sd = tv.state_dict()
    mapped, kw = torchvision_fasterrcnn_state(sd)
    assert kw == {"depth": 50, "num_classes": 90, "class_agnostic": False, "fpn_channels": 256, "hidden": 1024,
                  "norm": "frozen"}
    model = faster_rcnn_fpn(**kw)
    check_state(model, mapped, "tv")  # strict: no missing / unexpected keys, equal shapes
    # pre-0.13 key names (torchvision's published COCO file) map to the same model
    old = {k.replace("inner_blocks.0.0.", "inner_blocks.0.").replace("rpn.head.conv.0.0.", "rpn.head.conv."): v
           for k, v in sd.items()}
    check_state(model, torchvision_fasterrcnn_state(old)[0], "tv-old")
    broken = dict(sd)
    del broken["roi_heads.box_head.fc6.bias"]
    with pytest.raises(ValueError, match="missing keys.*roi_heads.box_head.fc6.bias"):
        check_state(model, torchvision_fasterrcnn_state(broken)[0], "broken.pth")
    broken = dict(sd)
    broken["rpn.head.cls_logits.weight"] = torch.zeros(5, 256, 1, 1)
    with pytest.raises(ValueError, match=r"rpn.head.cls_logits.weight: file \(5, 256, 1, 1\)"):
        check_state(model, torchvision_fasterrcnn_state(broken)[0], "broken.pth")
    with pytest.raises(ValueError, match="not a torchvision Faster R-CNN"):
        torchvision_fasterrcnn_state({"conv1.weight": torch.zeros(1)}, "x.pth")


def test_torchvision_oracle_r18_small_protocol(tmp_path):
    """An imported torchvision model gives torchvision's own eval outputs (boxes 0.01 px, scores 1e-5)."""
    paths, images = _real_images(2)
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    tv = FasterRCNN(backbone, num_classes=6, min_size=320, max_size=533).eval()
    tensors = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]
    _seed_predictor(tv, tensors[0])
    src = tmp_path / "tv_r18.pth"
    torch.save(tv.state_dict(), src)
    card = import_torchvision_fasterrcnn(src, tmp_path / "r18.safetensors")
    assert card["model"]["depth"] == 18 and card["model"]["num_classes"] == 5
    model, _ = load_model_file(tmp_path / "r18.safetensors")
    proto = DetProtocol("tv-320", 320, 533, "torch", 32)
    with torch.no_grad():
        refs = [tv([t])[0] for t in tensors]  # one image per call, as `detkd detect`
    for image, ref in zip(images, refs):
        _compare(ref, detect_image(model, image, proto))


@pytest.mark.slow
def test_torchvision_oracle_r50_through_the_cli(tmp_path):
    """``detkd import-weights torchvision-fasterrcnn`` + ``detkd detect --protocol torchvision --format coco``."""
    from typer.testing import CliRunner

    from detkd.cli import app

    paths, images = _real_images(2)
    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    tensors = [torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im in images]
    _seed_predictor(tv, tensors[0])
    src = tmp_path / "tv_r50.pth"
    torch.save(tv.state_dict(), src)
    runner = CliRunner()
    res = runner.invoke(app, ["import-weights", "torchvision-fasterrcnn", str(src), "--out", str(tmp_path / "r50.safetensors")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["detect", *map(str, paths), "--weights", str(tmp_path / "r50.safetensors"),
                              "--protocol", "torchvision", "--format", "coco", "--out-dir", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "d" / "detections.json").read_text())
    with torch.no_grad():
        refs = [tv([t])[0] for t in tensors]
    for path, ref in zip(paths, refs):
        mine = [r for r in rows if r["image_id"] == path.stem]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in mine)])
        ours = {"boxes": boxes, "scores": torch.tensor([r["score"] for r in mine]),
                "labels": torch.tensor([r["category_id"] for r in mine])}
        assert ref["labels"].max() <= 90
        _compare(ref, ours)


# ------------------------------------------------------------------------------------- faster-rcnn.pytorch


def _jwyang_state(width=0.25, hidden=64, classes=21, agnostic=False):
    """A state dict in faster-rcnn.pytorch's VGG-11 layout (``width`` scales the convs as our light VGG)."""
    torch.manual_seed(0)
    cfg = [v if v == "M" else int(v * width) for v in cfgs["A"]]
    feats = list(make_layers(cfg, batch_norm=False))[:-1]
    c = cfg[-2]
    sd = {f"RCNN_base.{k}": v for k, v in torch.nn.Sequential(*feats).state_dict().items()}
    shapes = {"RCNN_rpn.RPN_Conv": (c, c, 3, 3), "RCNN_rpn.RPN_cls_score": (18, c, 1, 1),
              "RCNN_rpn.RPN_bbox_pred": (36, c, 1, 1), "RCNN_top.0": (hidden, c * 49), "RCNN_top.3": (hidden, hidden),
              "RCNN_cls_score": (classes, hidden), "RCNN_bbox_pred": (4 if agnostic else 4 * classes, hidden),
              "stu_feature_adap.0": (c, c, 3, 3)}
    for name, shape in shapes.items():
        sd[f"{name}.weight"] = torch.randn(shape) * 0.05
        sd[f"{name}.bias"] = torch.randn(shape[0]) * 0.05
    return sd


def test_jwyang_import_folds_the_softmax_rpn_and_maps_the_head(tmp_path):
    sd = _jwyang_state()
    src = tmp_path / "faster_rcnn_1_7_10021.pth"
    torch.save({"session": 1, "epoch": 7, "model": sd, "pooling_mode": "align", "class_agnostic": False}, src)
    card = import_jwyang_fasterrcnn(src, tmp_path / "vgg.safetensors")
    assert card["model"]["depth"] == 11 and card["model"]["num_classes"] == 20
    assert card["source"]["dropped"] == ["stu_feature_adap.0.weight", "stu_feature_adap.0.bias"]
    model, _ = load_model_file(tmp_path / "vgg.safetensors")
    x = torch.rand(1, 3, 96, 128) * 255
    with torch.no_grad():
        out = model(x)
        c5 = out.feats["c5"]
        # reference RPN: 2A-channel score map, softmax over (bg, fg) after the (B, 2, A*H, W) reshape
        h = F.relu(F.conv2d(c5, sd["RCNN_rpn.RPN_Conv.weight"], sd["RCNN_rpn.RPN_Conv.bias"], padding=1))
        s = F.conv2d(h, sd["RCNN_rpn.RPN_cls_score.weight"], sd["RCNN_rpn.RPN_cls_score.bias"])
        b, _, hh, ww = s.shape
        prob = F.softmax(s.view(b, 2, -1, ww), 1).view(b, 18, hh, ww)[:, 9:]  # [B, A, H, W] object probability
        ref_obj = prob.permute(0, 2, 3, 1).reshape(b, -1)
        assert torch.allclose(out.head["rpn.objectness"][0][..., 0].sigmoid(), ref_obj, atol=1e-6)
        # reference RCNN head on one RoI: RoIAlign -> fc6 -> ReLU -> fc7 -> ReLU -> cls_score
        roi = [torch.tensor([[8.0, 8, 72, 64]])]
        r = model.roi_forward(out.feats, roi, out.image_sizes)
        v = F.relu(F.linear(r.feats.flatten(1), sd["RCNN_top.0.weight"], sd["RCNN_top.0.bias"]))
        v = F.relu(F.linear(v, sd["RCNN_top.3.weight"], sd["RCNN_top.3.bias"]))
        assert torch.allclose(r.cls_logits, F.linear(v, sd["RCNN_cls_score.weight"], sd["RCNN_cls_score.bias"]), atol=1e-5)


def test_jwyang_import_is_strict(tmp_path):
    sd = _jwyang_state()
    del sd["RCNN_top.3.bias"]
    src = tmp_path / "bad.pth"
    torch.save({"model": sd}, src)
    with pytest.raises(ValueError, match=r"bad.pth.*missing keys.*roi_heads.box_head.fc7.bias"):
        import_jwyang_fasterrcnn(src, tmp_path / "bad.safetensors")
    sd = _jwyang_state()
    sd["RCNN_extra.weight"] = torch.zeros(3)
    torch.save({"model": sd}, src)
    with pytest.raises(ValueError, match=r"unexpected keys.*RCNN_extra.weight"):
        import_jwyang_fasterrcnn(src, tmp_path / "bad.safetensors")
    torch.save({"model": {"RCNN_base.0.weight": torch.zeros(1)}}, src)
    with pytest.raises(ValueError, match="not a faster-rcnn.pytorch VGG checkpoint"):
        import_jwyang_fasterrcnn(src, tmp_path / "bad.safetensors")


# ----------------------------------------------------------------------------------------- backbone init


def test_backbone_init_torchvision_resnet(tmp_path):
    src = tmp_path / "resnet18.pth"
    ref = resnet18(weights=None).state_dict()
    torch.save(ref, src)
    for model in (faster_rcnn_fpn(depth=18, num_classes=3), faster_rcnn_fpn_lite(num_classes=3)):
        keys = load_backbone_init(model, src)
        assert "backbone.body.layer4.1.conv2.weight" in keys and not any(".fc." in k for k in keys)
        body = model.backbone.body.state_dict()
        assert torch.equal(body["layer3.0.conv1.weight"], ref["layer3.0.conv1.weight"])
        assert torch.equal(body["bn1.running_var"], ref["bn1.running_var"])
    torch.save(resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="unexpected keys.*backbone.body.layer1.2"):
        load_backbone_init(faster_rcnn_fpn(depth=18, num_classes=3), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="a ResNet state dict cannot initialise a VGG model"):
        load_backbone_init(faster_rcnn_vgg(depth=11, hidden=64, num_classes=3), src)


@pytest.mark.slow
def test_backbone_init_torchvision_and_caffe_vgg16(tmp_path):
    from torchvision.models import vgg16

    ref = vgg16(weights=None).state_dict()  # jwyang's vgg16_caffe.pth has exactly these keys
    src = tmp_path / "vgg16_caffe.pth"
    torch.save(ref, src)
    model = faster_rcnn_vgg(num_classes=20)
    keys = load_backbone_init(model, src)
    assert len(keys) == 26 + 4  # 13 convs + fc6/fc7
    sd = model.state_dict()
    assert torch.equal(sd["backbone.28.weight"], ref["features.28.weight"])
    assert torch.equal(sd["roi_heads.box_head.fc7.weight"], ref["classifier.3.weight"])
    with pytest.raises(ValueError, match="missing keys.*backbone.28.weight"):
        load_backbone_init(model, _drop(ref, "features.28.weight", tmp_path))


def _drop(sd, key, tmp_path):
    sd = dict(sd)
    del sd[key]
    torch.save(sd, tmp_path / "dropped.pth")
    return tmp_path / "dropped.pth"


def test_batched_evaluation_path_equals_detect_image():
    """``detkd.infer.ProtocolImages`` + ``detect_batch`` (the training-time evaluation) with an object-detector
    protocol give the numbers of ``detect_image``."""
    from detkd.infer import ProtocolImages, collate_images, detect_batch

    torch.manual_seed(0)
    model = faster_rcnn_fpn_lite(num_classes=3, score_thresh=0.0).eval()
    g = torch.Generator().manual_seed(0)
    images = [(torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy() for h, w in ((90, 120), (90, 120), (70, 64))]
    ds = [(im, {"image_id": str(i)}) for i, im in enumerate(images)]
    proto = DetProtocol("tv-128", 128, 200, "torch", 32, thresholds={"score_thresh": 0.0, "max_dets": 50})
    wrapped = ProtocolImages(ds, proto)
    ims, metas = collate_images([wrapped[i] for i in range(3)])
    dets = detect_batch(model, ims, metas, proto)
    for im, d in zip(images, dets):
        ref = detect_image(model, im, proto)
        assert len(d["boxes"]) == len(ref["boxes"]) > 0
        assert torch.allclose(d["boxes"], ref["boxes"], atol=1e-3) and torch.allclose(d["scores"], ref["scores"], atol=1e-5)
