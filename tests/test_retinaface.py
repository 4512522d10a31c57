"""RetinaFace: layout and keys, the DetOutput contract, the MultiBoxLoss, decoding and the inference helpers."""
import numpy as np
import pytest
import torch
from torch import nn

from detkd.infer import PROTOCOLS, detect_files, detect_image, draw_detections, read_image, resize_factor
from detkd.models.retinaface import RetinaFace, RetinaFaceConfig, retinaface_mnet, retinaface_r50
from detkd.models.weights import load_model_file, save_model_file
from detkd.registry import build_model
from detkd.structures import Assignment, DetOutput



@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return retinaface_mnet(width=0.25, activation="relu")


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return retinaface_mnet(width=0.75, activation="relu", task_convs=True)


def targets_two_images():
    return [
        {
            "boxes": torch.tensor([[10.0, 12.0, 40.0, 44.0], [60.0, 20.0, 90.0, 60.0]]),
            "labels": torch.ones(2, dtype=torch.long),
            "landmarks": torch.tensor([[[20.0, 25.0], [30, 25], [25, 30], [21, 36], [29, 36]]] * 2),
            "landmarks_valid": torch.tensor([True, False]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
         "landmarks": torch.zeros(0, 5, 2), "landmarks_valid": torch.zeros(0, dtype=torch.bool)},
    ]


# ---------------------------------------------------------------------------------------------- layout


def test_student_keys_params_match_biubug6(student):
    sd = student.state_dict()
    assert len(sd) == 300
    assert sum(p.numel() for p in student.parameters()) == 426608
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes["body.stage1.0.0.weight"] == (8, 3, 3, 3)
    assert shapes["fpn.output3.0.weight"] == (64, 256, 1, 1)
    assert shapes["ssh1.conv3X3.0.weight"] == (32, 64, 3, 3)
    assert shapes["ssh1.conv7x7_3.0.weight"] == (16, 16, 3, 3)
    assert shapes["ClassHead.0.conv1x1.weight"] == (4, 64, 1, 1)
    assert shapes["LandmarkHead.2.conv1x1.bias"] == (20,)
    assert "pixel_mean" not in sd


def test_teacher_width_and_task_conv_keys(teacher):
    sd = teacher.state_dict()
    assert tuple(sd["body.stage1.0.0.weight"].shape) == (24, 3, 3, 3)
    assert tuple(sd["fpn.output3.0.weight"].shape) == (64, 768, 1, 1)
    for i in range(3):
        assert tuple(sd[f"ClassHead.{i}.conv_dw_3x3.0.weight"].shape) == (64, 1, 3, 3)
        assert tuple(sd[f"BboxHead.{i}.conv_dw_3x3.3.weight"].shape) == (64, 64, 1, 1)
        assert not any(k.startswith(f"LandmarkHead.{i}.conv_dw") for k in sd)


def test_activation_variants():
    leaky = retinaface_mnet(activation="leaky0.1")
    n_leaky = sum(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1 for m in leaky.modules())
    assert n_leaky == 27 + 5 + 6  # backbone (1 conv_bn + 13 conv_dw x 2), FPN 5 convs, SSH 2 x 3
    relu = retinaface_mnet(activation="relu")
    assert not any(isinstance(m, nn.LeakyReLU) for m in relu.modules())
    assert relu.state_dict().keys() == leaky.state_dict().keys()
    with pytest.raises(ValueError, match="leaky0.1"):
        retinaface_mnet(activation="gelu")


def test_registry_build_and_declared_taps(teacher):
    m = build_model(RetinaFaceConfig())
    assert isinstance(m, RetinaFace) and m.config.name == "retinaface_mnet"
    assert m.channels == {"p3": 64, "p4": 64, "p5": 64} and m.strides == {"p3": 8, "p4": 16, "p5": 32}
    assert teacher.channels["cls_feat.p4"] == 64 and teacher.strides["reg_feat.p5"] == 32


def test_model_normalises_rgb_to_bgr_minus_mean(student):
    seen = {}
    h = student.body.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    img = torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1).expand(1, 3, 32, 32).clone()
    img[0, 0, 0, 0] = 200.0  # R of one pixel -> channel 2 (BGR) gets 200 - 123
    student.eval()
    student(img)
    h.remove()
    x = seen["x"]
    assert x[0, 2, 0, 0].item() == pytest.approx(77.0)
    x[0, 2, 0, 0] = 0
    assert x.abs().max().item() == 0.0


# ---------------------------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_detoutput_complete_in_both_modes(teacher, mode):
    teacher.train(mode == "train")
    images = torch.rand(2, 3, 96, 128) * 255
    out = teacher(images, targets_two_images(), decode=True)
    assert isinstance(out, DetOutput) and isinstance(out.assign, Assignment)
    for lvl, (h, w) in zip(("p3", "p4", "p5"), [(12, 16), (6, 8), (3, 4)]):
        assert out.feats[lvl].shape == (2, 64, h, w)
        assert out.feats[f"cls_feat.{lvl}"].shape == (2, 64, h, w)
        assert out.feats[f"reg_feat.{lvl}"].shape == (2, 64, h, w)
    sizes = [2 * 12 * 16, 2 * 6 * 8, 2 * 3 * 4]
    assert out.level_sizes() == sizes
    for key, k in (("cls_logits", 2), ("box_reg", 4), ("landmarks", 10)):
        assert [t.shape for t in out.head[key]] == [(2, n, k) for n in sizes]
    assert [p.shape for p in out.priors] == [(n, 4) for n in sizes]
    assert set(out.losses) == {"task.loc", "task.cls", "task.landm"}
    assert set(out.raw_losses) == {"loc", "cls", "landm"}
    assert torch.allclose(out.losses["task.loc"], 2 * out.raw_losses["loc"])
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert len(out.dets) == 2
    for d in out.dets:
        n = d["boxes"].shape[0]
        assert d["scores"].shape == (n,) and d["labels"].shape == (n,) and d["landmarks"].shape == (n, 5, 2)
        assert (d["scores"] > 0.02).all() and (d["scores"][:-1] >= d["scores"][1:]).all()
    plain = teacher(images)
    assert plain.assign is None and plain.losses == {} and plain.dets is None and len(plain.feats) == 9
    teacher.eval()


def test_assignment_labels_mining_and_neg_rank(student):
    student.train()
    out = student(torch.rand(2, 3, 96, 128) * 255, targets_two_images())
    a = out.assign
    p = sum(out.level_sizes())
    assert a.labels.shape == (2, p) and set(a.labels.unique().tolist()) <= {-1, 0, 1}
    assert (a.labels[0] == 1).any() and (a.labels[0] == -1).any()  # landmark-less face -> -1
    assert torch.equal(a.pos, a.labels != 0)
    n_pos = a.pos.sum(1)
    assert n_pos[1] == 0 and not a.neg[1].any()  # image without GT: no positives, no negatives
    assert (a.neg.sum(1) <= torch.clamp(7 * n_pos, max=p - 1)).all()
    assert a.neg[0].sum() == min(7 * n_pos[0].item(), p - n_pos[0].item())
    assert torch.equal(a.ignore, ~(a.pos | a.neg))
    assert (a.matched[a.pos] >= 0).all() and (a.matched[~a.pos] == -1).all()
    distill_neg = (a.neg_rank < torch.clamp(3 * n_pos, max=p - 1)[:, None]) & ~a.pos
    assert not (distill_neg & ~a.neg).any() and distill_neg[0].sum() == 3 * n_pos[0]


def test_loss_backward_and_all_background_batch(student):
    student.train()
    student.zero_grad()
    out = student(torch.rand(2, 3, 64, 64) * 255, targets_two_images()[::-1])
    sum(out.losses.values()).backward()
    assert student.ClassHead[0].conv1x1.weight.grad is not None
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    out = student(torch.rand(2, 3, 64, 64) * 255, empty)
    assert not out.assign.pos.any()
    assert all(v.item() == 0.0 for v in out.losses.values())
    sum(out.losses.values()).backward()  # still differentiable


def test_loss_value_equals_reference_formula(student):
    """Recompute MultiBoxLoss by hand from the assignment (pos/neg sets, normalisation by #pos)."""
    student.train()
    tg = targets_two_images()
    out = student(torch.rand(2, 3, 96, 128) * 255, tg)
    a = out.assign
    conf = out.cat_head("cls_logits")
    n = a.pos.sum().item()
    sel = a.pos | a.neg
    ce = torch.nn.functional.cross_entropy(conf[sel], a.pos[sel].long(), reduction="sum") / n
    assert out.raw_losses["cls"].item() == pytest.approx(ce.item(), rel=1e-5)


def test_wrong_target_count_and_channels_are_errors(student):
    with pytest.raises(ValueError, match="targets"):
        student(torch.rand(2, 3, 32, 32), targets_two_images()[:1])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(2, 1, 32, 32\)"):
        student(torch.rand(2, 1, 32, 32))


def test_r50_variant():
    torch.manual_seed(0)
    m = retinaface_r50()
    sd = m.state_dict()
    assert tuple(sd["fpn.output1.0.weight"].shape) == (256, 512, 1, 1)
    assert tuple(sd["ClassHead.0.conv1x1.weight"].shape) == (4, 256, 1, 1)
    assert "body.layer4.2.conv3.weight" in sd and not any(k.startswith("body.fc") for k in sd)
    m.eval()
    out = m(torch.rand(1, 3, 64, 96) * 255)
    assert [f.shape[1] for f in out.feats.values()] == [256, 256, 256]
    assert m.channels["p3"] == 256


# ------------------------------------------------------------------------------------------------ infer


def test_protocols_and_resize_factor():
    assert set(PROTOCOLS) == {"biubug6-origin", "tdkd-1600", "tdkd-640"}
    a, b = PROTOCOLS["tdkd-640"], PROTOCOLS["tdkd-1600"]  # same post-processing, smaller scale
    assert (a.conf_thresh, a.nms_thresh, a.top_k, a.keep_top_k) == (b.conf_thresh, b.nms_thresh, b.top_k, b.keep_top_k)
    assert resize_factor(320, 320, "tdkd-640") == pytest.approx(2.0)
    p = PROTOCOLS["tdkd-1600"]
    assert (p.nms_thresh, p.top_k, p.keep_top_k) == (0.3, 5000, 750)
    assert resize_factor(683, 1024, "biubug6-origin") == 1.0
    assert resize_factor(683, 1024, "tdkd-1600") == pytest.approx(2150 / 1024)  # 1600/683*1024 > 2150
    assert resize_factor(1000, 1200, "tdkd-1600") == pytest.approx(1.6)
    with pytest.raises(ValueError, match="tdkd-1600"):
        resize_factor(10, 10, "tdkd1600")


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        read_image(bad)


def test_detect_image_scales_back_and_detect_files(tmp_path, student):
    import cv2

    img = (np.random.default_rng(0).uniform(0, 255, (50, 70, 3))).astype(np.uint8)
    student.eval()
    d = detect_image(student, img, "tdkd-1600")  # r = 1600 / 50 = 32 > cap -> 2150 / 70
    assert d["boxes"].shape[1] == 4 and d["landmarks"].shape[1:] == (5, 2)
    assert d["boxes"].shape[0] <= 750
    if len(d["boxes"]):
        assert d["boxes"].abs().max() < 70 * 40  # in original pixels, not resized ones
    assert not student.training
    path = tmp_path / "9--Event" / "img_1.jpg"
    path.parent.mkdir()
    cv2.imwrite(str(path), img)
    save_model_file(student, tmp_path / "m.safetensors")
    model, card = load_model_file(tmp_path / "m.safetensors")
    assert card["num_tensors"] == 300
    pngs = detect_files(tmp_path / "m.safetensors", "biubug6-origin", tmp_path / "png", "png", [path])
    assert pngs[0].is_file() and read_image(pngs[0]).shape == (50, 70, 3)
    try:
        from detkd.eval.widerface import write_txt  # noqa: F401
    except ImportError:
        pytest.skip("detkd.eval.widerface.write_txt not available yet")
    txts = detect_files(tmp_path / "m.safetensors", "biubug6-origin", tmp_path / "txt", "widerface-txt", [path])
    lines = txts[0].read_text().splitlines()
    assert txts[0].parent.name == "9--Event" and lines[0] == "img_1" and int(lines[1]) == len(lines) - 2


def test_draw_detections(tmp_path):
    img = np.zeros((40, 60, 3), np.uint8)
    dets = {"boxes": np.array([[5.0, 5, 30, 30]]), "scores": np.array([0.9]),
            "landmarks": np.full((1, 5, 2), 15.0)}
    out = draw_detections(img, dets, tmp_path / "d.png", gt_boxes=np.array([[1.0, 1, 20, 20]]))
    drawn = read_image(out)
    assert drawn[5, 10, 0] == 255  # red box edge (RGB)
    assert drawn[1, 10, 1] == 200  # green GT edge


def test_draw_detections_with_class_names_and_no_landmarks(tmp_path):
    """The one PNG drawer also serves object detectors: ``name score`` labels, no landmarks needed."""
    img = np.zeros((60, 80, 3), np.uint8)
    dets = {"boxes": np.array([[5.0, 20, 30, 50], [40, 20, 70, 50]]), "scores": np.array([0.9, 0.1]),
            "labels": np.array([1, 7])}
    plain = read_image(draw_detections(img, dets, tmp_path / "a.png", min_score=0.3))
    named = read_image(draw_detections(img, dets, tmp_path / "b.png", min_score=0.3, names=["bg", "cat"]))
    assert plain[20, 10, 0] == 255 and named[20, 10, 0] == 255  # the box above min_score
    assert plain[20, 50, 0] == 0  # the one below is not drawn
    assert (named != plain).any()  # the label text differs ("cat 0.90" vs "0.90")
