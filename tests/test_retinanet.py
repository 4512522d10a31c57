"""RetinaNet: DetOutput contract, torchvision's losses, and torchvision as the eval-mode oracle on real images."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection import RetinaNet as TVRetinaNet
from torchvision.models.detection import retinanet_resnet50_fpn
from typer.testing import CliRunner

from detkd.cli import app
from detkd.data.image import read_image
from detkd.infer_detector import DET_PROTOCOLS, detect_image
from detkd.models.import_onestage import import_torchvision_retinanet
from detkd.models.retinanet import retinanet
from detkd.models.weights import load_model_file

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = SHARED / "images" / "widerface_val" / "11_Meeting_Meeting_11_Meeting_Meeting_11_176.jpg"
needs_real = pytest.mark.skipif(not REAL.is_file(), reason=f"real image not available: {REAL}")


def light(**kw):
    torch.manual_seed(0)
    return retinanet(**{"depth": 18, "num_classes": 3, "fpn_channels": 32, "num_convs": 1, **kw})


def targets():
    return [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0], [40.0, 30.0, 120.0, 60.0]]),
             "labels": torch.tensor([1, 3])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]


def test_light_retinanet_fills_detoutput():
    m = light().train()
    x = torch.rand(2, 3, 128, 160) * 255
    out = m(x, targets(), decode=True, image_sizes=[(128, 160), (100, 120)])
    assert set(out.losses) == {"task.cls", "task.box"} and set(out.raw_losses) == {"cls", "box"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    sum(out.losses.values()).backward()
    assert [f.shape[-1] for f in (out.feats[f"p{i}"] for i in range(3, 8))] == [20, 10, 5, 3, 2]
    for lvl, s in m.strides.items():
        assert out.feats[lvl].shape[1] == m.channels[lvl]
    sizes = out.level_sizes()
    assert sizes == [p.shape[0] for p in out.priors] == [t.shape[1] for t in out.head["box_reg"]]
    assert out.head["cls_logits"][0].shape[-1] == m.head_spec["cls_logits"].dim == 3
    assert m.head_spec["cls_logits"].kind == "sigmoid" and m.head_spec["box_reg"].encoding == "rcnn"
    a = out.assign
    assert (a.pos | a.neg | a.ignore).all() and not (a.pos & a.neg).any()
    assert not a.pos[1].any() and set(a.labels[0][a.pos[0]].tolist()) <= {1, 3}
    assert len(out.dets) == 2 and out.dets[1]["boxes"][:, 2].max() <= 120 if len(out.dets[1]["boxes"]) else True
    # no targets, no decode: no losses, no assignment, no dets
    m.eval()
    with torch.no_grad():
        plain = m(x)
    assert plain.assign is None and not plain.losses and plain.dets is None


def test_gn_head_matches_torchvision_v2_layout_and_trains():
    """``head_gn_groups``: GroupNorm after every tower conv, no conv bias (torchvision's ``_v2`` head keys)."""
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead

    m = light(head_gn_groups=8).train()
    tower = m.head.classification_head.conv
    assert isinstance(tower[0][1], nn.GroupNorm) and tower[0][0].bias is None
    tv = RetinaNetClassificationHead(32, 9, 3, norm_layer=lambda c: nn.GroupNorm(8, c))
    ours = {k.removeprefix("head.classification_head.") for k in m.state_dict() if ".classification_head.conv." in k}
    assert ours == {k for k in tv.state_dict() if k.startswith("conv.0.")}  # one conv per tower here
    out = m(torch.rand(2, 3, 128, 160) * 255, targets())
    sum(out.losses.values()).backward()
    assert tower[0][1].weight.grad is not None and torch.isfinite(tower[0][1].weight.grad).all()


def test_losses_equal_torchvision_compute_loss():
    """Same head outputs and anchors through torchvision's own compute_loss gives the same numbers."""
    m = light(num_classes=4, label_base=0).train()
    x = torch.rand(2, 3, 128, 160) * 255
    t = targets()
    out = m(x, t)
    backbone = nn.Identity()
    backbone.out_channels = 32
    tv = TVRetinaNet(backbone, num_classes=4)
    anchors = torch.cat(out.priors)
    ref = tv.compute_loss(t, {"cls_logits": out.cat_head("cls_logits"), "bbox_regression": out.cat_head("box_reg")},
                          [anchors, anchors])
    assert torch.allclose(out.losses["task.cls"], ref["classification"], rtol=1e-5, atol=1e-6)
    assert torch.allclose(out.losses["task.box"], ref["bbox_regression"], rtol=1e-5, atol=1e-6)


def test_bad_labels_fail_clearly():
    m = light().train()
    t = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0]]), "labels": torch.tensor([7])}]
    with pytest.raises(ValueError, match="labels \[7\] outside 1..3"):
        m(torch.rand(1, 3, 96, 96) * 255, t)
    flat = [{"boxes": torch.tensor([[10.0, 12.0, 10.0, 90.0]]), "labels": torch.tensor([1])}]
    with pytest.raises(ValueError, match="target 0: boxes without area"):
        m(torch.rand(1, 3, 96, 96) * 255, flat)
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        m(torch.rand(1, 3, 96, 96) * 255, [{"boxes": torch.zeros(2, 4), "labels": torch.tensor([1])}])


def torchvision_model():
    torch.manual_seed(0)
    tv = retinanet_resnet50_fpn(weights=None, weights_backbone=None).eval()
    sd = tv.state_dict()
    # random init scores ~0.01 (< 0.05): raise the prior so the oracle compares hundreds of detections
    sd["head.classification_head.cls_logits.bias"].fill_(-2.0)
    tv.load_state_dict(sd)
    return tv


def compare(ours, ref):
    assert ours["boxes"].shape == ref["boxes"].shape and len(ref["boxes"]) > 50
    assert torch.equal(ours["labels"], ref["labels"])
    assert (ours["boxes"] - ref["boxes"]).abs().max().item() < 0.01
    assert (ours["scores"] - ref["scores"]).abs().max().item() < 1e-5


@needs_real
def test_torchvision_oracle_small_scale(tmp_path):
    """The imported model under the torchvision protocol (at a reduced scale) reproduces torchvision's outputs."""
    tv = torchvision_model()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    card = import_torchvision_retinanet(tmp_path / "tv.pth", tmp_path / "rn.safetensors")
    assert card["model"]["num_classes"] == 91 and card["model"]["label_base"] == 0
    model, _ = load_model_file(tmp_path / "rn.safetensors")
    image = read_image(REAL)
    proto = dataclasses.replace(DET_PROTOCOLS["torchvision"], min_size=256, max_size=427)
    tv.transform.min_size, tv.transform.max_size = (256,), 427
    with torch.no_grad():
        ref = tv([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    compare(detect_image(model, image, proto), ref)


@pytest.mark.slow
@needs_real
def test_torchvision_oracle_cli_full_scale(tmp_path):
    """`detkd import-weights torchvision-retinanet` + `detkd detect --protocol torchvision --format coco` at 800/1333."""
    tv = torchvision_model()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    runner = CliRunner()
    res = runner.invoke(app, ["import-weights", "torchvision-retinanet", str(tmp_path / "tv.pth"),
                              "--out", str(tmp_path / "rn.safetensors")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["detect", str(REAL), "--weights", str(tmp_path / "rn.safetensors"), "--protocol",
                              "torchvision", "--format", "coco", "--out-dir", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "d" / "detections.json").read_text())
    assert {r["image_id"] for r in rows} == {REAL.stem}
    image = read_image(REAL)
    with torch.no_grad():
        ref = tv([torch.from_numpy(image).permute(2, 0, 1).float() / 255])[0]
    xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rows)])
    ours = {"boxes": xyxy, "scores": torch.tensor([r["score"] for r in rows]),
            "labels": torch.tensor([r["category_id"] for r in rows])}
    compare(ours, ref)


def test_importer_rejects_foreign_layouts(tmp_path):
    sd = light(num_classes=91, label_base=0, fpn_channels=256, num_convs=4).state_dict()
    sd["head.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="unexpected keys.*head.extra.weight"):
        import_torchvision_retinanet(tmp_path / "x.pth", tmp_path / "o.safetensors")
    torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "y.pth")
    with pytest.raises(ValueError, match="not a torchvision RetinaNet"):
        import_torchvision_retinanet(tmp_path / "y.pth", tmp_path / "o.safetensors")


def test_distribution_branch_is_off_by_default_and_trains_with_dfl():
    from detkd.ops.gfl import bbox2distance, distribution_focal_loss

    plain, branch = light(), light(dist_reg_max=16)
    assert not any("bbox_dist" in k for k in plain.state_dict())  # torchvision's layout, key for key
    assert "box_dist" not in plain.head_spec and plain.loss_weights == {}
    extra = set(branch.state_dict()) - set(plain.state_dict())
    assert extra == {"head.regression_head.bbox_dist.weight", "head.regression_head.bbox_dist.bias"}
    spec = branch.head_spec["box_dist"]
    assert (spec.kind, spec.dim, spec.reg_max) == ("distribution", 68, 16)
    branch.load_state_dict(plain.state_dict(), strict=False)  # same trunk, towers and predictors
    x = torch.rand(2, 3, 128, 160) * 255
    a = plain.train()(x, targets(), decode=True)
    b = branch.train()(x, targets(), decode=True)
    assert [t.shape[1:] for t in b.head["box_dist"]] == [(t.shape[1], 68) for t in b.head["box_reg"]]
    # decoding keeps the deltas: the detections and the torchvision losses are the plain model's
    for da, db in zip(a.dets, b.dets):
        assert torch.equal(da["boxes"], db["boxes"]) and torch.equal(da["scores"], db["scores"])
    for key in ("cls", "box"):
        assert torch.equal(a.raw_losses[key], b.raw_losses[key])
    # DFL on the positives, stride units, 0.25 weight, mean over images of sum / 4 / max(1, n_pos)
    pos = b.assign.pos[0]
    anchors = torch.cat(b.priors)[pos]
    stride = torch.cat([torch.full((p.shape[0],), float(s)) for p, s in zip(b.priors, (8, 16, 32, 64, 128))])[pos]
    gt = targets()[0]["boxes"][b.assign.matched[0][pos]]
    d = bbox2distance((anchors[:, :2] + anchors[:, 2:]) / 2 / stride[:, None], gt / stride[:, None], 16)
    logits = b.cat_head("box_dist")[0][pos].reshape(-1, 17)
    want = distribution_focal_loss(logits, d.reshape(-1)).sum() / 4 / int(pos.sum()) / 2  # image 1 has no GT
    assert b.raw_losses["dfl"].item() == pytest.approx(want.item(), rel=1e-5)
    assert b.losses["task.dfl"].item() == pytest.approx(0.25 * want.item(), rel=1e-5)
    # the per-GT thresholds LD's VLR reads: fg_iou for every GT
    assert [t.tolist() for t in b.assign.thresholds] == [[0.5, 0.5], []]
    b.losses["task.dfl"].backward()
    assert branch.head.regression_head.conv[0][0].weight.grad.abs().sum() > 0  # DFL trains the shared tower
