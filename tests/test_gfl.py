"""GFL: DetOutput contract, the loss against a per-level transcription of mmdet's GFLHead.loss, the mmdet importer."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models import resnet18
from torchvision.ops import generalized_box_iou_loss

from detkd.models.gfl import gfl
from detkd.models.import_onestage import import_mmdet_gfl
from detkd.models.weights import load_model_file
from detkd.ops.gfl import aligned_iou, bbox2distance, distance2bbox, distribution_focal_loss, integral, \
    quality_focal_loss


def light(**kw):
    torch.manual_seed(0)
    return gfl(**{"depth": 18, "num_classes": 3, "fpn_channels": 32, "stacked_convs": 1, "gn_groups": 8, **kw})


def targets():
    return [{"boxes": torch.tensor([[10.0, 12.0, 90.0, 100.0], [60.0, 30.0, 150.0, 80.0]]),
             "labels": torch.tensor([1, 3])},
            {"boxes": torch.tensor([[5.0, 5.0, 60.0, 70.0]]), "labels": torch.tensor([2])}]


def test_gfl_fills_detoutput_and_spec():
    m = light().train()
    x = torch.rand(2, 3, 128, 160) * 255
    out = m(x, targets(), decode=True, image_sizes=[(128, 160), (90, 100)])
    assert set(out.losses) == {"task.cls", "task.box", "task.dfl"}
    assert set(out.raw_losses) == {"cls", "box", "dfl"}
    assert torch.allclose(out.losses["task.box"], 2.0 * out.raw_losses["box"])
    assert torch.allclose(out.losses["task.dfl"], 0.25 * out.raw_losses["dfl"])
    sum(out.losses.values()).backward()
    spec = m.head_spec["box_dist"]
    assert spec.kind == "distribution" and spec.reg_max == 16 and out.head["box_dist"][0].shape[-1] == 68
    assert out.level_sizes() == [p.shape[0] for p in out.priors]
    # one square prior of 8 * stride centred at (x * stride, y * stride)
    p3 = out.priors[0]
    assert p3[1].tolist() == [8.0 - 32, -32.0, 8.0 + 32, 32.0]
    a = out.assign
    assert len(a.thresholds) == 2 and a.thresholds[0].shape == (2,) and a.pos[0].any() and a.pos[1].any()
    # image 2 is 90 x 100 (padded to 96 x 128 by its own pipeline): stride-8 locations beyond are ignored
    ign = a.ignore[1, :p3.shape[0]].view(16, 20)
    assert not ign[:12, :16].any() and ign[12:].all() and ign[:, 16:].all()
    assert not (a.pos & a.ignore).any()
    # frozen stem/layer1 and BN in eval mode while training (norm_eval)
    assert not m.backbone.body.layer1[0].conv1.weight.requires_grad
    assert not m.backbone.body.layer2[0].bn1.training and m.head.cls_convs[0].gn.training


def reference_loss(m, out, targets):
    """mmdet v2 GFLHead.loss transcribed level by level (pos in stride units; avg factors as METHODS §3.2)."""
    a, cfg = out.assign, m.config
    strides = (8, 16, 32, 64, 128)
    n_pos_total = sum(max(int(k), 1) for k in a.pos.sum(1))
    qfl, giou, dfl, wsum = 0.0, 0.0, 0.0, 0.0
    start = 0
    for lvl, (cls, dist, pri, s) in enumerate(zip(out.head["cls_logits"], out.head["box_dist"], out.priors, strides)):
        n = pri.shape[0]
        sl = slice(start, start + n)
        start += n
        for b, t in enumerate(targets):
            pos = a.pos[b, sl]
            valid = ~a.ignore[b, sl]
            labels = torch.full((n,), cfg.num_classes)
            labels[pos] = a.labels[b, sl][pos] - 1
            score = torch.zeros(n)
            if pos.any():
                centres = ((pri[:, :2] + pri[:, 2:]) / 2)[pos] / s
                tgt = t["boxes"][a.matched[b, sl][pos]] / s
                pred = distance2bbox(centres, integral(dist[b][pos], 16))
                w = cls[b][pos].detach().sigmoid().max(1).values
                score[pos] = aligned_iou(pred.detach(), tgt)
                giou = giou + (generalized_box_iou_loss(pred, tgt, reduction="none") * w).sum()
                d = distribution_focal_loss(dist[b][pos].reshape(-1, 17), bbox2distance(centres, tgt, 16).reshape(-1))
                dfl = dfl + (d * w.repeat_interleave(4)).sum() / 4
                wsum = wsum + w.sum()
            qfl = qfl + quality_focal_loss(cls[b][valid], labels[valid], score[valid]).sum()
    return qfl / n_pos_total, giou / (wsum + 1e-6), dfl / (wsum + 1e-6)


def test_gfl_loss_matches_per_level_transcription():
    m = light().train()
    x = torch.rand(2, 3, 160, 192) * 255
    t = targets()
    with torch.no_grad():
        out = m(x, t, image_sizes=[(160, 192), (130, 150)])
    q, g, d = reference_loss(m, out, t)
    assert out.raw_losses["cls"].item() == pytest.approx(float(q), rel=1e-5)
    assert out.raw_losses["box"].item() == pytest.approx(float(g), rel=1e-5)
    assert out.raw_losses["dfl"].item() == pytest.approx(float(d), rel=1e-5)


def test_gfl_no_gt_batch_is_finite():
    m = light().train()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    out = m(torch.rand(2, 3, 96, 96) * 255, empty)
    assert out.losses["task.box"].item() == 0.0 and out.losses["task.dfl"].item() == 0.0
    assert torch.isfinite(out.losses["task.cls"]) and out.losses["task.cls"].item() > 0
    sum(out.losses.values()).backward()
    with pytest.raises(ValueError, match="outside 1..3"):
        m(torch.rand(1, 3, 96, 96) * 255, [{"boxes": torch.tensor([[1.0, 1, 20, 20]]), "labels": torch.tensor([0])}])


def mmdet_layout(num_classes=3, channels=64, stacked=2, reg_max=16, seed=0):
    """A state dict in mmdet v2 GFL / LD key layout (ResNet-18 student), written from the mmdet module names."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731
    sd = {f"backbone.{k}": (v.float() + r(*v.shape) if v.is_floating_point() else v)
          for k, v in resnet18(weights=None).state_dict().items() if not k.startswith("fc.")}
    for i, c in enumerate((128, 256, 512)):
        sd[f"neck.lateral_convs.{i}.conv.weight"] = r(channels, c, 1, 1)
        sd[f"neck.lateral_convs.{i}.conv.bias"] = r(channels)
    for i in range(5):
        sd[f"neck.fpn_convs.{i}.conv.weight"] = r(channels, channels, 3, 3)
        sd[f"neck.fpn_convs.{i}.conv.bias"] = r(channels)
    for branch in ("cls_convs", "reg_convs"):
        for i in range(stacked):
            sd[f"bbox_head.{branch}.{i}.conv.weight"] = r(channels, channels, 3, 3)
            sd[f"bbox_head.{branch}.{i}.gn.weight"] = 1 + r(channels)
            sd[f"bbox_head.{branch}.{i}.gn.bias"] = r(channels)
    sd["bbox_head.gfl_cls.weight"] = r(num_classes, channels, 3, 3)
    sd["bbox_head.gfl_cls.bias"] = torch.full((num_classes,), -1.0)
    sd["bbox_head.gfl_reg.weight"] = r(4 * (reg_max + 1), channels, 3, 3)
    sd["bbox_head.gfl_reg.bias"] = r(4 * (reg_max + 1))
    for i in range(5):
        sd[f"bbox_head.scales.{i}.scale"] = torch.tensor(1.0 + 0.1 * i)
    sd["bbox_head.integral.project"] = torch.linspace(0, reg_max, reg_max + 1)
    return sd


def test_mmdet_gfl_import(tmp_path):
    sd = mmdet_layout()
    torch.save({"meta": {"epoch": 12, "CLASSES": ("a", "b", "c")}, "state_dict": sd}, tmp_path / "ld_r18.pth")
    card = import_mmdet_gfl(tmp_path / "ld_r18.pth", tmp_path / "gfl.safetensors")
    cfg = card["model"]
    assert (cfg["depth"], cfg["num_classes"], cfg["fpn_channels"], cfg["stacked_convs"], cfg["reg_max"]) == \
        (18, 3, 64, 2, 16)
    model, _ = load_model_file(tmp_path / "gfl.safetensors")
    ours = model.state_dict()
    assert torch.equal(ours["backbone.fpn.extra_blocks.p7.weight"], sd["neck.fpn_convs.4.conv.weight"])
    assert torch.equal(ours["backbone.fpn.inner_blocks.2.0.bias"], sd["neck.lateral_convs.2.conv.bias"])
    assert torch.equal(ours["head.reg_convs.1.gn.weight"], sd["bbox_head.reg_convs.1.gn.weight"])
    assert torch.equal(ours["backbone.body.layer4.1.bn2.running_var"], sd["backbone.layer4.1.bn2.running_var"])
    assert ours["head.scales.3.scale"].item() == pytest.approx(1.3)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 128, 128) * 255, decode=True)
    assert len(out.dets[0]["boxes"]) > 0 and out.dets[0]["labels"].min() >= 1


def test_mmdet_gfl_import_cli(tmp_path):
    from typer.testing import CliRunner

    from detkd.cli import app

    torch.save({"state_dict": mmdet_layout(num_classes=5)}, tmp_path / "gfl.pth")
    res = CliRunner().invoke(app, ["import-weights", "mmdet-gfl", str(tmp_path / "gfl.pth"), "--out",
                                   str(tmp_path / "g.safetensors")])
    assert res.exit_code == 0, res.output
    assert load_model_file(tmp_path / "g.safetensors")[1]["model"]["num_classes"] == 5
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, tmp_path / "bad.pth")
    res = CliRunner().invoke(app, ["import-weights", "mmdet-gfl", str(tmp_path / "bad.pth"), "--out",
                                   str(tmp_path / "b.safetensors")])
    assert res.exit_code == 2 and "not an mmdet GFL checkpoint" in res.output


def test_mmdet_gfl_import_is_strict(tmp_path):
    sd = mmdet_layout()
    sd["bbox_head.gfl_extra.weight"] = torch.zeros(1)
    del sd["neck.fpn_convs.4.conv.bias"]
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as e:
        import_mmdet_gfl(tmp_path / "bad.pth", tmp_path / "o.safetensors")
    assert "head.gfl_extra.weight" in str(e.value) and "backbone.fpn.extra_blocks.p7.bias" in str(e.value)
    sd = mmdet_layout()
    sd["bbox_head.integral.project"] = torch.zeros(17)
    torch.save({"state_dict": sd}, tmp_path / "bad2.pth")
    with pytest.raises(ValueError, match="integral.project"):
        import_mmdet_gfl(tmp_path / "bad2.pth", tmp_path / "o.safetensors")


def test_autocast_losses_and_dets_stay_float32():
    from detkd.models.retinanet import retinanet

    torch.manual_seed(0)
    for m in (light(), retinanet(depth=18, num_classes=3, fpn_channels=16, num_convs=1)):
        m.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(torch.rand(1, 3, 96, 128) * 255, targets()[:1], decode=True)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.losses.values()), out.losses
        assert out.dets[0]["boxes"].dtype == torch.float32 and out.dets[0]["scores"].dtype == torch.float32
