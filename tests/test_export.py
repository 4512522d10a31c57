"""ONNX export and the ONNX Runtime backend against eager PyTorch (detkd.export, detkd.runtime).

Detectors: raw head outputs within 1e-4, final boxes within 0.5 px, same detections, for raw and --with-nms
graphs; face recognizers: embedding cosine >= 0.9999. Uses the shipped SynthFaces baseline (a trained model:
random weights give near-tied scores, whose NMS order is arbitrary) on SynthFaces val scenes.
"""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")

from detkd import registry  # noqa: E402
from detkd.data.synthfaces import write_synthfaces  # noqa: E402
from detkd.export import ExportError, ExportOptions, export_model, export_onnx, onnx_card_path  # noqa: E402
from detkd.infer import detect_files, detect_image, read_image  # noqa: E402
from detkd.models.weights import load_model_file  # noqa: E402
from detkd.runtime import load_inference_model, read_onnx_card  # noqa: E402

ASSET = Path(__file__).resolve().parents[1] / "detkd" / "assets" / "synthfaces_baseline_mnet025.safetensors"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("sf")
    write_synthfaces(root, seed=5, n_train=1, n_val=3, image_size=320)
    return sorted((root / "val" / "images").rglob("*.jpg"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped baseline exported raw (dynamic size), with NMS for two protocols, and static with uint8 input
    (only the first export runs the export-time parity check: the tests below compare every graph anyway)."""
    d = tmp_path_factory.mktemp("onnx")
    out = {}
    for name, opts in {
        "raw": ExportOptions(dynamic_size=True, size=(320, 320)),
        "nms": ExportOptions(dynamic_size=True, size=(320, 320), with_nms=True, check=False),
        "nms640": ExportOptions(dynamic_size=True, size=(320, 320), with_nms=True, protocol="tdkd-640", check=False),
        "u8static": ExportOptions(size=(256, 320), input_dtype="uint8", check=False),
    }.items():
        export_onnx(ASSET, d / f"{name}.onnx", opts)
        out[name] = d / f"{name}.onnx"
    return out


def assert_same_dets(ref: dict, got: dict, where=""):
    """Same detections: a one-to-one match with boxes and landmarks within 0.5 px and scores within 1e-4.

    Rows are matched by box distance, not by position: detections whose scores tie to float rounding may be
    listed in either order by the two backends.
    """
    n_ref, n_got = len(ref["scores"]), len(got["scores"])
    assert n_ref == n_got, f"{where}: {n_got} detections vs eager {n_ref}"
    assert n_ref > 0, f"{where}: nothing detected, the comparison would be empty"
    dist = (ref["boxes"][:, None, :] - got["boxes"][None, :, :]).abs().amax(-1)  # [N, N]
    match = dist.argmin(1)
    assert match.unique().numel() == n_ref, f"{where}: detections do not match one to one"
    assert dist.gather(1, match[:, None]).max() <= 0.5, where
    assert (ref["landmarks"] - got["landmarks"][match]).abs().max() <= 0.5, where
    assert (ref["scores"] - got["scores"][match]).abs().max() <= 1e-4, where


def test_raw_heads_and_detections_match_eager(exported, scenes):
    eager, _ = load_model_file(ASSET)
    ort_model, card = load_inference_model(exported["raw"], "onnxruntime")
    assert card["graph"]["dynamic_size"] and max(card["parity"]["max_abs_err"].values()) <= 1e-4
    for path in scenes[:2]:
        image = read_image(path)
        for size in [(320, 320), (200, 296)]:  # the traced size and another one (dynamic axes)
            x = torch.from_numpy(cv2.resize(image, size[::-1]).transpose(2, 0, 1).astype(np.float32))[None]
            with torch.no_grad():
                ref, got = eager(x), ort_model(x)
            for key in ref.head:
                for lvl, (r, g) in enumerate(zip(ref.head[key], got.head[key])):
                    assert r.shape == g.shape
                    assert (r - g).abs().max() <= 1e-4, f"{key}[{lvl}] at {size}"
        for protocol in ("biubug6-origin", "tdkd-640"):
            assert_same_dets(detect_image(eager, image, protocol), detect_image(ort_model, image, protocol),
                             f"{path.name} {protocol}")


@pytest.mark.parametrize("which,protocol", [("nms", "biubug6-origin"), ("nms640", "tdkd-640")])
def test_nms_graph_matches_eager(exported, scenes, which, protocol):
    eager, _ = load_model_file(ASSET)
    ort_model, card = load_inference_model(exported[which], "onnxruntime")
    assert card["graph"]["with_nms"] and card["graph"]["protocol"]["name"] == protocol
    for path in scenes:
        image = read_image(path)
        assert_same_dets(detect_image(eager, image, protocol), detect_image(ort_model, image, protocol), path.name)
    other = "tdkd-640" if protocol == "biubug6-origin" else "biubug6-origin"
    with pytest.raises(ValueError, match=f"exported --with-nms for protocol '{protocol}'"):
        detect_image(ort_model, read_image(scenes[0]), other)


def test_uint8_input_and_static_size(exported, scenes):
    eager, _ = load_model_file(ASSET)
    image = read_image(scenes[0])
    small = cv2.resize(image, (320, 256))
    static, card = load_inference_model(exported["u8static"], "onnxruntime")
    assert card["graph"]["input_dtype"] == "uint8"
    assert card["graph"]["size"] == [256, 320] and not card["graph"]["dynamic_size"]
    assert_same_dets(detect_image(eager, small), detect_image(static, small), "static uint8 graph")
    with pytest.raises(ValueError, match=r"fixed to 256x320 input, got 320x320; re-export with --dynamic-size"):
        detect_image(static, image)


def _small_face_model(name, **kw):
    torch.manual_seed(0)
    model = registry.lookup("model", name)(input_size=32, embedding_dim=64, **kw).eval()
    with torch.no_grad():  # trained-like BN statistics so folding matters
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _save_face_model(model, path, name, **kw):
    """A face recognizer model file: safetensors + a card whose config rebuilds it (FaceRecognizer has no
    config dataclass; exported students carry the same dict under ``model``)."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    card = {"model": {"name": name, "input_size": 32, "embedding_dim": 64, **kw}}
    path.with_suffix(".json").write_text(json.dumps(card))


@pytest.mark.parametrize("name,kw", [("mobilefacenet", {"width": 0.25}), ("iresnet18", {"width": 0.25}),
                                     ("iresnet50", {"width": 0.125}), ("iresnet100", {"width": 0.125})])
def test_face_recognizer_embeddings(tmp_path, name, kw):
    model = _small_face_model(name, **kw)
    weights = tmp_path / f"{name}.safetensors"
    _save_face_model(model, weights, name, **kw)
    card = export_onnx(weights, tmp_path / f"{name}.onnx", ExportOptions(input_dtype="uint8"))
    assert card["graph"]["kind"] == "face_recognizer" and card["graph"]["size"] == [32, 32]
    ort_model, _ = load_inference_model(tmp_path / f"{name}.onnx", "onnxruntime")
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        ref = model(x.float()).embedding
    got = ort_model(x.float()).embedding
    assert got.shape == ref.shape
    cos = torch.nn.functional.cosine_similarity(ref, got, dim=1)
    assert cos.min() >= 0.9999, cos


def test_every_registered_model_has_an_exporter_or_a_clear_refusal():
    from detkd.export import _register_builtin, find_exporter
    from detkd.models.dense import DenseDetector
    from detkd.models.facerec import FaceRecognizer

    _register_builtin()
    registry.load_all()
    from detkd.models.faster_rcnn import FasterRCNN

    for name in registry.MODELS:
        model = registry.lookup("model", name)(**registry.TINY_CONFIGS.get(name, {}))
        assert isinstance(model, (DenseDetector, FaceRecognizer, FasterRCNN)), name
        find_exporter(model)
    with pytest.raises(ExportError, match="Linear is not exportable to ONNX yet"):
        find_exporter(nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["retinanet", "gfl"])
def test_generic_dense_detectors_raw_export(tmp_path, name):
    """RetinaNet and GFL export through the same dense-skeleton hook; ORT heads and detections match eager."""
    torch.manual_seed(0)
    model = registry.lookup("model", name)(**registry.TINY_CONFIGS[name]).eval()
    export_model(model, tmp_path / f"{name}.onnx", ExportOptions(size=(64, 96), dynamic_size=True),
                 config={"name": name, **registry.TINY_CONFIGS[name]})
    ort_model, card = load_inference_model(tmp_path / f"{name}.onnx", "onnxruntime")
    assert card["graph"]["outputs"][0].endswith(f".{model.levels[0]}")
    x = torch.rand(1, 3, 80, 112) * 255
    with torch.no_grad():
        ref, got = model(x), ort_model(x)
        for key in ref.head:
            for r, g in zip(ref.head[key], got.head[key]):
                assert (r - g).abs().max() <= 1e-4 * max(1.0, r.abs().max().item()), key
        d_ref, d_got = model.postprocess(ref)[0], ort_model.postprocess(got)[0]
    assert len(d_ref["scores"]) == len(d_got["scores"])
    if len(d_ref["scores"]):
        assert (d_ref["scores"] - d_got["scores"]).abs().max() <= 1e-4


@pytest.mark.slow  # ~10 s: ResNet-50 trace + ONNX Runtime session
def test_retinaface_r50_raw_export(tmp_path):
    torch.manual_seed(0)
    model = registry.lookup("model", "retinaface_r50")().eval()
    card = export_model(model, tmp_path / "r50.onnx", ExportOptions(size=(96, 128)))
    assert max(card["parity"]["max_rel_err"].values()) <= 1e-4
    ort_model, _ = load_inference_model(tmp_path / "r50.onnx", "onnxruntime")
    x = torch.rand(1, 3, 96, 128) * 255
    with torch.no_grad():
        ref, got = model(x), ort_model(x)
    for key in ref.head:
        for r, g in zip(ref.head[key], got.head[key]):
            scale = max(1.0, r.abs().max().item())
            assert (r - g).abs().max() / scale <= 1e-4, key


# ------------------------------------------------------------------------------------------------ bad input


def test_export_refuses_missing_card_and_unknown_architecture(tmp_path):
    lone = tmp_path / "lone.safetensors"
    shutil.copy(ASSET, lone)
    with pytest.raises(ExportError, match="model card lone.json is missing"):
        export_onnx(lone, tmp_path / "x.onnx")

    class Toy(nn.Module):
        config = None

        def forward(self, x):
            return x

    from detkd.models.retinaface import RetinaFaceConfig

    toy = Toy()
    toy.config = RetinaFaceConfig()
    with pytest.raises(ExportError, match="Toy is not exportable to ONNX yet"):
        export_model(toy, tmp_path / "toy.onnx", ExportOptions())
    with pytest.raises(ExportError, match="must end in .onnx"):
        export_onnx(ASSET, tmp_path / "x.onnx.bin")
    with pytest.raises(ExportError, match="input dtype"):
        export_onnx(ASSET, tmp_path / "x.onnx", ExportOptions(input_dtype="float16"))


def test_runtime_refuses_foreign_or_mismatched_onnx(tmp_path, exported):
    model = _small_face_model("mobilefacenet", width=0.25)
    _save_face_model(model, tmp_path / "face.safetensors", "mobilefacenet", width=0.25)
    export_onnx(tmp_path / "face.safetensors", tmp_path / "face.onnx", ExportOptions(check=False))
    with pytest.raises(ValueError, match="the card describes a face_recognizer \\(mobilefacenet\\), not a detector"):
        detect_files(tmp_path / "face.onnx", "biubug6-origin", tmp_path / "out", "png", [], backend="onnxruntime")
    # an ONNX file of another model next to this model's card: refused on the card check
    mixed = tmp_path / "mixed.onnx"
    shutil.copy(exported["raw"], mixed)
    shutil.copy(tmp_path / "face.onnx.json", tmp_path / "mixed.onnx.json")
    with pytest.raises(ValueError, match="not the one its card mixed.onnx.json describes"):
        read_onnx_card(mixed)
    (tmp_path / "nocard.onnx").write_bytes(exported["raw"].read_bytes())
    with pytest.raises(FileNotFoundError, match="model card not found"):
        load_inference_model(tmp_path / "nocard.onnx", "onnxruntime")
    with pytest.raises(ValueError, match="runs with --backend onnxruntime"):
        load_inference_model(exported["raw"], "eager")
    with pytest.raises(ValueError, match="needs an .onnx file"):
        load_inference_model(ASSET, "onnxruntime")
    card = json.loads(onnx_card_path(exported["raw"]).read_text())
    card["format"] = "something/1"
    bad = tmp_path / "badfmt.onnx"
    shutil.copy(exported["raw"], bad)
    onnx_card_path(bad).write_text(json.dumps(card))
    with pytest.raises(ValueError, match="not an ONNX model card"):
        read_onnx_card(bad)


def test_odd_images_are_handled_alike_by_both_backends(tmp_path, exported, scenes):
    rgb = read_image(scenes[0])
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    alpha = tmp_path / "alpha.png"
    cv2.imwrite(str(alpha), np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 128, np.uint8)]))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    results = {}
    for backend, weights in (("eager", ASSET), ("onnxruntime", exported["raw"])):
        for img in (gray, alpha):
            txt = detect_files(weights, "biubug6-origin", tmp_path / backend, "widerface-txt", [img], backend)[0]
            results[(backend, img.name)] = txt.read_text().splitlines()
        for img in (corrupt, empty):
            with pytest.raises(ValueError, match=f"cannot decode image .*{img.name}"):
                detect_files(weights, "biubug6-origin", tmp_path / backend, "png", [img], backend)
    for img in (gray, alpha):
        e, o = results[("eager", img.name)], results[("onnxruntime", img.name)]
        assert int(e[1]) == int(o[1]) > 0
        as_dets = [{"boxes": torch.tensor([[float(v) for v in ln.split()[:4]] for ln in lines[2:]]),
                    "scores": torch.tensor([float(ln.split()[4]) for ln in lines[2:]]),
                    "landmarks": torch.zeros(len(lines) - 2, 5, 2)} for lines in (e, o)]
        assert_same_dets(*as_dets, where=f"{img.name} (integer-pixel txt boxes)")


@pytest.mark.skipif(not (SHARED / "weights" / "retinaface_mnet025_leaky.pth").is_file(),
                    reason="../shared/data (real biubug6 checkpoint + WIDER image) not present")
def test_real_checkpoint_on_real_wider_image(tmp_path):
    from detkd.models.weights import import_retinaface_biubug6

    ckpt = SHARED / "weights" / "retinaface_mnet025_leaky.pth"
    import_retinaface_biubug6(ckpt, "leaky0.1", tmp_path / "m.safetensors")
    image = read_image(SHARED / "images" / "widerface_val" / "11_Meeting_Meeting_11_Meeting_Meeting_11_176.jpg")
    eager, _ = load_model_file(tmp_path / "m.safetensors")
    ref = detect_image(eager, image)
    for with_nms in (False, True):
        export_onnx(tmp_path / "m.safetensors", tmp_path / f"m{with_nms}.onnx",
                    ExportOptions(dynamic_size=True, with_nms=with_nms, check=False))
        ort_model, _ = load_inference_model(tmp_path / f"m{with_nms}.onnx", "onnxruntime")
        assert_same_dets(ref, detect_image(ort_model, image), f"with_nms={with_nms}")


def test_cli_export_and_detect_with_both_backends(tmp_path, scenes):
    from typer.testing import CliRunner

    from detkd.cli import app

    runner = CliRunner()
    onnx = tmp_path / "m.onnx"
    res = runner.invoke(app, ["export", str(ASSET), "--onnx", str(onnx), "--dynamic-size", "--size", "320x320"])
    assert res.exit_code == 0, res.output
    assert "ONNX Runtime vs eager" in res.output and onnx.is_file() and onnx_card_path(onnx).is_file()
    assert (tmp_path / "m.onnx.json").is_file() and ASSET.with_suffix(".json").is_file()
    txt = {}
    for backend, weights in (("eager", ASSET), ("onnxruntime", onnx)):
        res = runner.invoke(app, ["detect", str(scenes[0]), "--weights", str(weights), "--backend", backend,
                                  "--out-dir", str(tmp_path / backend), "--format", "widerface-txt"])
        assert res.exit_code == 0, res.output
        txt[backend] = next((tmp_path / backend).rglob("*.txt")).read_text().splitlines()
    assert txt["eager"][1] == txt["onnxruntime"][1] and int(txt["eager"][1]) > 0
    res = runner.invoke(app, ["detect", str(scenes[0]), "--weights", str(ASSET), "--backend", "onnxruntime",
                              "--out-dir", str(tmp_path / "x")])
    assert res.exit_code == 2 and "needs an .onnx file" in res.output
    res = runner.invoke(app, ["export", str(ASSET)])
    assert res.exit_code == 2 and "give --out" in res.output
    res = runner.invoke(app, ["export", str(ASSET), "--onnx", str(tmp_path / "b.onnx"), "--size", "big"])
    assert res.exit_code == 2 and "--size must be HxW" in res.output


def test_cli_eval_detector_same_ap_on_both_backends(exported, scenes):
    from typer.testing import CliRunner

    from detkd.cli import app

    val = scenes[0].parents[2]  # <root>/val/images/<event>/<name>.jpg
    aps = {}
    for backend, weights in (("eager", ASSET), ("onnxruntime", exported["raw"])):
        res = CliRunner().invoke(app, ["eval", "detector", "--weights", str(weights), "--images-dir",
                                       str(val / "images"), "--gt-dir", str(val / "gt"), "--backend", backend,
                                       "--json"])
        assert res.exit_code == 0, res.output
        aps[backend] = json.loads(res.output.strip().splitlines()[-1])
    assert aps["eager"].keys() == {"easy", "medium", "hard"}
    for k in aps["eager"]:
        assert abs(aps["eager"][k] - aps["onnxruntime"][k]) <= 1e-6, (k, aps)


def test_generic_detector_detect_files_on_both_backends(tmp_path):
    """`detkd detect --protocol torchvision --backend onnxruntime` for a one-stage generic detector (RetinaNet)."""
    from detkd.infer_detector import detect_files as detect_objects
    from detkd.models.weights import save_model_file

    torch.manual_seed(0)
    model = registry.lookup("model", "retinanet")(**registry.TINY_CONFIGS["retinanet"]).eval()
    save_model_file(model, tmp_path / "rn.safetensors")
    export_onnx(tmp_path / "rn.safetensors", tmp_path / "rn.onnx", ExportOptions(dynamic_size=True, size=(64, 96)))
    img = tmp_path / "img.jpg"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    res = {}
    for backend, weights in (("eager", tmp_path / "rn.safetensors"), ("onnxruntime", tmp_path / "rn.onnx")):
        out = detect_objects(weights, "torchvision", tmp_path / backend, "coco", [img], backend=backend)[0]
        res[backend] = json.loads(Path(out).read_text())
    assert len(res["eager"]) == len(res["onnxruntime"])
    for a, b in zip(sorted(res["eager"], key=lambda d: -d["score"]), sorted(res["onnxruntime"], key=lambda d: -d["score"])):
        assert abs(a["score"] - b["score"]) <= 1e-4


def _confident(model: nn.Module) -> nn.Module:
    """Random classifier biases: a random-init model then scores well above the thresholds (many detections)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") and "cls" in n:
                p.normal_(0, 1.0)
    return model


@pytest.mark.parametrize("name", ["retinanet", pytest.param("gfl", marks=pytest.mark.slow)])
def test_generic_dense_detectors_nms_graph(tmp_path, name):
    """--with-nms for RetinaNet / GFL: decoding, clipping to the valid size and class-wise NMS in the graph
    (dynamic size); same detections as the eager postprocess of the protocol (labels equal, boxes within 0.5 px,
    scores within 1e-4), at sizes other than the traced one; other thresholds are refused."""
    torch.manual_seed(0)
    model = _confident(registry.lookup("model", name)(**registry.TINY_CONFIGS[name]).eval())
    card = export_model(model, tmp_path / f"{name}.onnx",
                        ExportOptions(size=(64, 96), dynamic_size=True, with_nms=True, protocol="jwyang-600"),
                        config={"name": name, **registry.TINY_CONFIGS[name]})
    baked = card["graph"]["protocol"]["thresholds"]
    assert card["graph"]["extra_inputs"] == ["image_size"] and baked["nms_thresh"] == 0.3
    ort_model, _ = load_inference_model(tmp_path / f"{name}.onnx", "onnxruntime")
    thr = {"score_thresh": 0.0, "nms_thresh": 0.3, "max_dets": 100}
    for hp, wp, h, w in [(96, 128, 90, 120), (160, 96, 150, 96)]:
        x = torch.rand(1, 3, hp, wp) * 255
        with torch.no_grad():
            ref = model.postprocess(model(x, image_sizes=[(h, w)]), **thr)[0]
            got = ort_model.postprocess(ort_model(x, image_sizes=[(h, w)]), **thr)[0]
        n = len(ref["scores"])
        assert n == len(got["scores"]) and n > 0, (n, len(got["scores"]))
        dist = (ref["boxes"][:, None] - got["boxes"][None]).abs().amax(-1)
        dist = dist + 1e6 * (ref["labels"][:, None] != got["labels"][None])  # a box may be kept for two labels
        match = dist.argmin(1)
        assert match.unique().numel() == n and dist.gather(1, match[:, None]).max() <= 0.5
        assert (ref["scores"] - got["scores"][match]).abs().max() <= 1e-4
        assert got["boxes"][:, 2].max() <= w and got["boxes"][:, 3].max() <= h  # clipped to the valid size
    with pytest.raises(ValueError, match="exported --with-nms"):
        ort_model.postprocess(ort_model(x), nms_thresh=0.5)


def test_generic_nms_graph_refuses_a_retinaface_protocol(tmp_path):
    model = registry.lookup("model", "retinanet")(**registry.TINY_CONFIGS["retinanet"]).eval()
    with pytest.raises(ExportError, match="not a detector protocol"):
        export_model(model, tmp_path / "r.onnx", ExportOptions(size=(64, 64), with_nms=True,
                                                                  protocol="biubug6-origin"),
                     config={"name": "retinanet", **registry.TINY_CONFIGS["retinanet"]})


def _assert_same_labelled_dets(ref: dict, got: dict, where=""):
    """Same detections of a multi-class detector: matched one to one by box among equal labels (a box may be
    kept for several labels), boxes within 0.5 px, scores within 1e-4."""
    n = len(ref["scores"])
    assert n == len(got["scores"]) and n > 0, (where, n, len(got["scores"]))
    dist = (ref["boxes"][:, None] - got["boxes"][None]).abs().amax(-1)
    dist = dist + 1e6 * (ref["labels"][:, None] != got["labels"][None])
    match = dist.argmin(1)
    assert match.unique().numel() == n and dist.gather(1, match[:, None]).max() <= 0.5, where
    assert (ref["scores"] - got["scores"][match]).abs().max() <= 1e-4, where


@pytest.mark.parametrize("name", ["faster_rcnn_vgg", pytest.param("faster_rcnn_fpn", marks=pytest.mark.slow)])
def test_faster_rcnn_one_graph_export(tmp_path, name):
    """Faster R-CNN (RPN, proposal NMS, RoIAlign, box head, per-class NMS) in one ONNX graph: same detections as
    eager at sizes other than the traced one, with padding (``image_size`` < input size)."""
    torch.manual_seed(0)
    model = registry.lookup("model", name)(**registry.TINY_CONFIGS[name]).eval()
    card = export_model(model, tmp_path / f"{name}.onnx", ExportOptions(size=(128, 160), dynamic_size=True),
                        config={"name": name, **registry.TINY_CONFIGS[name]})
    assert card["graph"]["with_nms"] and card["graph"]["protocol"]["name"] == "torchvision"
    assert card["parity"]["one_to_one"] and card["parity"]["max_box_px"] <= 0.5
    ort_model, _ = load_inference_model(tmp_path / f"{name}.onnx", "onnxruntime")
    for hp, wp, h, w in [(160, 224, 150, 210), (96, 192, 96, 192)]:
        x = torch.rand(1, 3, hp, wp) * 255
        x[:, :, h:], x[:, :, :, w:] = 0, 0
        with torch.no_grad():
            ref = model.postprocess(model(x, image_sizes=[(h, w)]))[0]
            got = ort_model.postprocess(ort_model(x, image_sizes=[(h, w)]))[0]
        _assert_same_labelled_dets(ref, got, f"{hp}x{wp} valid {h}x{w}")


def test_faster_rcnn_detect_files_on_both_backends(tmp_path):
    """`detkd detect --backend onnxruntime` on an exported Faster R-CNN (protocol torchvision-320: keep-ratio
    resize + pad to 32): the same detections in original pixels as eager."""
    from detkd.infer_detector import detect_files as detect_objects
    from detkd.models.weights import save_model_file

    torch.manual_seed(0)
    name = "faster_rcnn_vgg"
    model = registry.lookup("model", name)(**registry.TINY_CONFIGS[name]).eval()
    save_model_file(model, tmp_path / "fr.safetensors")
    export_onnx(tmp_path / "fr.safetensors", tmp_path / "fr.onnx",
                ExportOptions(dynamic_size=True, size=(128, 160), protocol="torchvision-320", check=False))
    img = tmp_path / "img.jpg"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8))
    res = {}
    for backend, weights in (("eager", tmp_path / "fr.safetensors"), ("onnxruntime", tmp_path / "fr.onnx")):
        out = detect_objects(weights, "torchvision-320", tmp_path / backend, "coco", [img], backend=backend)[0]
        res[backend] = json.loads(Path(out).read_text())
    as_dets = {b: {"boxes": torch.tensor([[d["bbox"][0], d["bbox"][1], d["bbox"][0] + d["bbox"][2],
                                             d["bbox"][1] + d["bbox"][3]] for d in r]).reshape(-1, 4),
                   "scores": torch.tensor([d["score"] for d in r]),
                   "labels": torch.tensor([d["category_id"] for d in r])} for b, r in res.items()}
    _assert_same_labelled_dets(as_dets["eager"], as_dets["onnxruntime"], "detect_files")
