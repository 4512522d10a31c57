"""Teacher cache: built once, reused while the fingerprint matches, rebuilt when stale; clear errors."""
import pytest
import torch

from detkd.distill.cache import CachedFaceDataset, TeacherCache, cache_fingerprint, weights_digest
from detkd.models.facerec import mobilefacenet

S, K, D = 16, 3, 16


class Folder(torch.utils.data.Dataset):
    """A stand-in identity folder: ``keys`` and ``(image, label)`` items."""

    def __init__(self, n=6, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, S, S), generator=g, dtype=torch.uint8)
        self.labels = torch.arange(n) % K
        self.keys = [f"id{int(y)}/img{i}.png" for i, y in enumerate(self.labels)]

    def __len__(self):
        return len(self.keys)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _teacher(seed=0):
    torch.manual_seed(seed)
    return mobilefacenet(embedding_dim=D, num_classes=K, input_size=S, width=0.25)


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save(_teacher().state_dict(), path)
    return path


def _factory(path, calls):
    def make():
        calls.append(1)
        net = _teacher(seed=123)
        net.load_state_dict(torch.load(path, weights_only=True))
        return net

    return make


def test_build_then_reuse_without_teacher(tmp_path, weights):
    data, calls = Folder(), []
    kw = dict(teacher_weights=weights, dataset=data, make_teacher=_factory(weights, calls), img_size=S)
    first = TeacherCache.build_or_load(tmp_path / "cache.pt", need_centres=True, **kw)
    assert first.rebuilt and len(calls) == 1
    net = _teacher()
    net.eval()
    with torch.no_grad():
        want = net(data.images.float()).embedding  # raw (un-normalised), un-flipped
    assert torch.allclose(first.embeddings, want, atol=1e-5)
    assert torch.equal(first.centres, net.head.weight)
    second = TeacherCache.build_or_load(tmp_path / "cache.pt", need_centres=True, **kw)
    assert not second.rebuilt and len(calls) == 1  # the teacher was not built again
    assert torch.equal(second.embeddings, first.embeddings) and second.keys == data.keys
    assert torch.equal(second.get(data.keys[4]), want[4])


@pytest.mark.parametrize("change", ["weights", "keys", "img_size", "centres"])
def test_stale_cache_is_rebuilt(tmp_path, weights, change):
    data, calls = Folder(), []
    path = tmp_path / "cache.pt"
    TeacherCache.build_or_load(path, teacher_weights=weights, dataset=data,
                               make_teacher=_factory(weights, calls), img_size=S)
    img_size, need_centres = S, False
    if change == "weights":
        sd = _teacher().state_dict()
        sd["head.weight"] = sd["head.weight"] + 1.0
        torch.save(sd, weights)
    elif change == "keys":
        data.keys = data.keys[::-1]
    elif change == "img_size":
        img_size = S + 1
    else:
        need_centres = True  # a cache without centres cannot serve MarginDistillation
    again = TeacherCache.build_or_load(path, teacher_weights=weights, dataset=data,
                                       make_teacher=_factory(weights, calls), img_size=img_size,
                                       need_centres=need_centres)
    assert again.rebuilt and len(calls) == 2
    assert TeacherCache.load(path).fingerprint == again.fingerprint


def test_fingerprint_of_state_dict_and_file(tmp_path, weights):
    sd = _teacher().state_dict()
    assert weights_digest(sd) == weights_digest(dict(sd))
    sd2 = dict(sd)
    sd2["head.weight"] = sd["head.weight"].clone()
    sd2["head.weight"][0, 0] += 1e-3
    assert weights_digest(sd2) != weights_digest(sd)
    keys = ["a", "b"]
    assert cache_fingerprint(weights, keys, S) != cache_fingerprint(weights, keys[::-1], S)
    assert cache_fingerprint(weights, keys, S) == cache_fingerprint(str(weights), keys, S)
    with pytest.raises(FileNotFoundError, match="teacher weights"):
        weights_digest(tmp_path / "missing.pt")


def test_cached_dataset_items_and_missing_key(tmp_path, weights):
    data = Folder()
    cache = TeacherCache.build_or_load(tmp_path / "c.pt", teacher_weights=weights, dataset=data,
                                       make_teacher=_factory(weights, []), img_size=S)
    ds = CachedFaceDataset(data, cache)
    image, label, t = ds[2]
    assert torch.equal(image, data.images[2]) and label == int(data.labels[2])
    assert torch.equal(t, cache.get(data.keys[2])) and t.shape == (D,)
    other = Folder(n=7)
    with pytest.raises(KeyError, match="not in the teacher cache"):
        CachedFaceDataset(other, cache)
    with pytest.raises(KeyError, match="img99"):
        cache.get("id0/img99.png")


def test_corrupt_or_missing_cache_file(tmp_path, weights):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a cache")
    with pytest.raises(ValueError, match="bad.pt"):
        TeacherCache.load(bad)
    torch.save({"version": 1, "keys": []}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="missing the field"):
        TeacherCache.load(tmp_path / "partial.pt")
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        TeacherCache.load(tmp_path / "nope.pt")
    # a corrupt file in place is rebuilt, not fatal
    calls = []
    cache = TeacherCache.build_or_load(bad, teacher_weights=weights, dataset=Folder(),
                                       make_teacher=_factory(weights, calls), img_size=S)
    assert cache.rebuilt and len(calls) == 1


@pytest.mark.slow
def test_facerec_runs_build_once_then_never_load_the_teacher(tmp_path, monkeypatch):
    """End to end through the engine: the first distillation run builds the cache, later runs (any method)
    reuse it and never construct the teacher."""
    import detkd.experiment_facerec as face
    from detkd.config import ExperimentConfig, TrainConfig
    from detkd.data.synthids import write_synthids
    from detkd.models.facerec import FaceModelConfig

    root = write_synthids(tmp_path / "ids", seed=0, n_train_ids=4, imgs_per_id=3, n_val_ids=2, n_pairs=20, img_size=S)
    tcfg = FaceModelConfig(name="mobilefacenet", embedding_dim=D, num_classes=4, input_size=S, width=0.25)
    from detkd.registry import build_model

    torch.manual_seed(0)
    torch.save(build_model(tcfg).state_dict(), tmp_path / "teacher.pt")

    def experiment(method, **kw):
        kd = face.FaceKDConfig(method=method, teacher=tcfg, teacher_weights=str(tmp_path / "teacher.pt"),
                               cache_path=str(tmp_path / "cache.pt"), **kw)
        return ExperimentConfig(
            name=method, task="facerec",
            model=FaceModelConfig(name="mobilefacenet", embedding_dim=D, num_classes=4, input_size=S, width=0.25),
            data=face.FaceDataConfig(root=str(root / "train"), img_size=S, val_bin=str(root / "val.bin")),
            train=TrainConfig(epochs=1, batch_size=6 if not method.startswith("triplet") else 2, out_dir=str(tmp_path),
                              device="cpu", log_every=1),
            distill=kd,
        )

    first = face.build_facerec(experiment("margin_distillation"))
    assert first.cache.rebuilt and first.cache.centres.shape == (4, D)

    def no_teacher(*a, **k):
        raise AssertionError("the teacher was loaded although the cache is valid")

    monkeypatch.setattr(face, "load_teacher", no_teacher)
    for method, kw in [("margin_distillation", {}), ("triplet_l2", dict(imgs_per_id=3, bag_size=6, mining_alpha=4.0))]:
        cfg = experiment(method, **kw)
        if method.startswith("triplet"):
            cfg.train.init_weights = ""  # from scratch in this test
        cfg.train.tensorboard = cfg.train.progress = False  # optional Trainer fields
        summary = face.train_facerec(cfg)
        assert summary["global_step"] >= 1 and 0.0 <= summary["eval"]["acc"] <= 1.0
    with pytest.raises(ValueError, match="num_classes"):
        bad = experiment("angular")
        bad.model.num_classes = 5
        face.build_facerec(bad)
    with pytest.raises(ValueError, match="bag_size"):
        face.build_facerec(experiment("triplet_cos"))  # batch 2 ≠ 7200 // 18
