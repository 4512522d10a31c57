"""Real foreign checkpoints and a real WIDER val image (skip without ../shared/data)."""
from pathlib import Path

import numpy as np
import pytest
import torch

from detkd.models.retinaface import retinaface_mnet
from detkd.models.weights import (
    import_retinaface_biubug6,
    load_backbone_imagenet,
    load_model_file,
    load_state_file,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WEIGHTS = DATA / "weights"
IMAGE_NAME = "11_Meeting_Meeting_11_Meeting_Meeting_11_176"
IMAGE = DATA / "images" / "widerface_val" / f"{IMAGE_NAME}.jpg"
GT_DIR = DATA / "widerface_val_gt"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found: {path}")
    return path


@pytest.fixture(scope="module")
def leaky_file(tmp_path_factory):
    src = need(WEIGHTS / "retinaface_mnet025_leaky.pth")
    out = tmp_path_factory.mktemp("w") / "leaky.safetensors"
    card = import_retinaface_biubug6(src, "leaky0.1", out)
    return out, card


def test_leaky_checkpoint_imports_strictly(leaky_file):
    out, card = leaky_file
    assert card["format"] == "detkd-model/2" and card["num_tensors"] == 300
    assert card["model"]["activation"] == "leaky0.1" and card["model"]["name"] == "retinaface_mnet"
    assert card["model"]["min_sizes"] == [[16, 32], [64, 128], [256, 512]]
    assert card["source"]["md5"] == "d308262876f997c63f79c7805b2cdab0"
    model, card2 = load_model_file(out)
    src = load_state_file(WEIGHTS / "retinaface_mnet025_leaky.pth")
    for k, v in model.state_dict().items():
        assert torch.equal(v, src[k]), k
    assert not model.training


@pytest.mark.parametrize("name", ["retinaface_mnet025_relu_tdkd_base.pth", "retinaface_mnet025_relu_tdkd_distilled.pth"])
def test_tdkd_relu_checkpoints_import_strictly(name, tmp_path):
    card = import_retinaface_biubug6(need(WEIGHTS / name), "relu", tmp_path / "m.safetensors")
    assert card["num_tensors"] == 300 and card["model"]["activation"] == "relu"
    model, _ = load_model_file(tmp_path / "m.safetensors")
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in model.modules())


def test_wrong_shape_and_missing_keys_are_named(tmp_path):
    src = need(WEIGHTS / "retinaface_mnet025_leaky.pth")
    with pytest.raises(ValueError, match=r"body\.stage1\.0\.0\.weight: file \(8, 3, 3, 3\) vs model \(24, 3, 3, 3\)"):
        import_retinaface_biubug6(src, "leaky0.1", tmp_path / "x.safetensors", width=0.75)
    sd = load_state_file(src)
    sd.pop("fpn.merge1.0.weight")
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"missing keys \(1\): fpn\.merge1\.0\.weight.*unexpected keys \(1\): extra\.weight"):
        import_retinaface_biubug6(tmp_path / "broken.pth", "relu", tmp_path / "y.safetensors")


def test_model_file_shape_mismatch_names_key(leaky_file, tmp_path):
    import json

    out, card = leaky_file
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(out.read_bytes())
    card = dict(card, model=dict(card["model"], width=0.5))
    bad.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"shape mismatches.*body\.stage1\.0\.0\.weight"):
        load_model_file(bad)
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        (tmp_path / "nothing.safetensors").write_bytes(b"")
        load_model_file(tmp_path / "nothing.safetensors")


def test_imagenet_tar_needs_trust():
    tar = need(WEIGHTS / "mobilenetv1_x025_imagenet.tar")
    model = retinaface_mnet(activation="leaky0.1")
    before = model.body.stage1[0][0].weight.clone()
    with pytest.raises(PermissionError, match="arbitrary code"):
        load_backbone_imagenet(model, tar)
    assert torch.equal(model.body.stage1[0][0].weight, before)
    load_backbone_imagenet(model, tar, trust=True)
    raw = torch.load(tar, map_location="cpu", weights_only=False)["state_dict"]
    assert torch.equal(model.body.stage1[0][0].weight, raw["module.stage1.0.0.weight"])
    assert torch.equal(model.body.stage3[1][4].running_var, raw["module.stage3.1.4.running_var"])


def test_real_image_recall_and_ap(leaky_file):
    need(IMAGE)
    need(GT_DIR / "wider_face_val.mat")
    try:
        from detkd.data.widerface import load_gt
        from detkd.eval.widerface import WiderFaceEvaluator, dets_to_xywhs
    except ImportError:
        pytest.skip("detkd.eval.widerface is not available yet")
    from torchvision.ops import box_iou

    from detkd.infer import detect_image, read_image

    model, _ = load_model_file(leaky_file[0])
    dets = detect_image(model, read_image(IMAGE), "biubug6-origin")
    gt = load_gt(GT_DIR)
    g = np.asarray(gt.boxes[gt.index("11--Meeting", IMAGE_NAME)], dtype=np.float64)  # x, y, w, h
    assert len(g) == 17
    g_xyxy = torch.from_numpy(np.concatenate([g[:, :2], g[:, :2] + g[:, 2:]], 1))
    iou = box_iou(g_xyxy, dets["boxes"].double())
    recalled = int((iou.max(1).values >= 0.5).sum())
    print(f"\n{IMAGE_NAME}: {len(dets['boxes'])} dets, recalled {recalled}/17 GT faces at IoU >= 0.5")
    assert recalled >= 14
    assert abs(len(dets["boxes"]) - 58) <= 2  # EVAL.md §4.3: the reference writes 58 boxes for this image
    ev = WiderFaceEvaluator(gt, images=[("11--Meeting", IMAGE_NAME)])
    ev.add("11--Meeting", IMAGE_NAME, dets_to_xywhs(dets["boxes"].numpy(), dets["scores"].numpy()))
    ap = ev.evaluate()
    print(f"AP on this image: {ap}")
    assert ap["easy"] > 0.9 and ap["hard"] > 0.8


def test_leaky_checkpoint_in_relu_model_is_worse(leaky_file, tmp_path):
    """EVAL.md §4.4: the wrong activation loads silently but changes the function."""
    need(IMAGE)
    from detkd.infer import detect_image, read_image
    from detkd.models.weights import check_state

    model, _ = load_model_file(leaky_file[0])
    wrong = retinaface_mnet(activation="relu")
    sd = model.state_dict()
    check_state(wrong, sd, "leaky")
    wrong.load_state_dict(sd)
    img = read_image(IMAGE)[:320, :480]
    a = detect_image(model, img)["scores"]
    b = detect_image(wrong, img)["scores"]
    assert (a > 0.5).sum() != (b > 0.5).sum() or not torch.allclose(a[:5], b[:5])
