"""Face-recognition objectives: the METHODS.md §5.9 values, the §5.8 guards, and one step of every task."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from detkd.distill import facerec_losses as L
from detkd.distill.facerec_objectives import FaceKDConfig, MarginDistillationTask, build_face_task
from detkd.distill.triplet import IdentityGroups, collate_groups, mine_triplets
from detkd.models.facerec import arcface_target_logit, mobilefacenet

S, K, D = 16, 6, 32  # tiny input size, classes, embedding


def _student(seed=0, k=K):
    torch.manual_seed(seed)
    return mobilefacenet(embedding_dim=D, num_classes=k, input_size=S, width=0.25)


def _batch(b=8, k=K, seed=0, teacher=True):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (b, 3, S, S), generator=g).float()
    labels = torch.arange(b) % k
    out = (images, labels)
    return out + (torch.randn(b, D, generator=g),) if teacher else out


# ------------------------------------------------------------------------------------------ §5.9 values


@pytest.mark.parametrize("cos, expected", [(0.5, 1.510181), (0.9, 37.174244), (-0.5, -54.655103)])
def test_arcface_target_logit_values(cos, expected):
    assert arcface_target_logit(torch.tensor(cos, dtype=torch.float64), 64.0, 0.5).item() == pytest.approx(expected, abs=1e-5)
    # the same value through the full logit matrix: GT column modified, the others s·cos
    cosm = torch.tensor([[cos, 0.25]], dtype=torch.float64)
    z = L.margin_logits(cosm, torch.tensor([0]), 64.0, 0.5)
    assert z[0, 0].item() == pytest.approx(expected, abs=1e-5)
    assert z[0, 1].item() == pytest.approx(16.0)


def test_md_margins_values():
    m = L.md_margins(torch.tensor([0.8, 0.4, -0.1]), 0.2, 0.5)
    assert torch.allclose(m, torch.tensor([0.5, 0.35, 0.1625]), atol=1e-6)
    # same through teacher_centre_cosine: teacher vectors at those cosines to their own (un-normalised) centre
    centres = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    d = torch.tensor([0.8, 0.4, -0.1])
    t = torch.stack([d, (1 - d**2).sqrt(), torch.zeros(3)], 1) * torch.tensor([[2.0], [5.0], [0.3]])
    got = L.teacher_centre_cosine(t, centres, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(got, d, atol=1e-6)


def _unit_at(cos, axis, dim=4):
    v = torch.zeros(dim)
    v[0], v[axis] = cos, math.sqrt(1 - cos**2)
    return v


@pytest.mark.parametrize("kind", ["l2", "cos"])
def test_triplet_margin_values(kind):
    d_ap, d_an = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([1.0, 0.6, 0.7])
    if kind == "l2":  # squared L2 of unit vectors: d = 2 − 2cos
        ta = torch.eye(4)[[0, 0, 0]] * 7.0  # un-normalised on purpose
        tp = torch.stack([_unit_at(1 - d / 2, 1) for d in d_ap.tolist()]) * 2.0
        tn = torch.stack([_unit_at(1 - d / 2, 2) for d in d_an.tolist()])
    else:  # angles
        ta = torch.eye(4)[[0, 0, 0]]
        tp = torch.stack([_unit_at(math.cos(a), 1) for a in d_ap.tolist()])
        tn = torch.stack([_unit_at(math.cos(a), 2) for a in d_an.tolist()])
    delta = L.teacher_triplet_delta(ta, tp, tn, kind)
    assert torch.allclose(delta, torch.tensor([0.8, 0.1, 0.0]), atol=1e-5)
    m = L.triplet_margins(delta, 0.2, 0.5)
    assert torch.allclose(m, torch.tensor([0.5, 0.2375, 0.2]), atol=1e-5)


def test_md_logits_equal_teacher_angle_off_target():
    student = _student()
    centres = torch.randn(K, D)
    task = MarginDistillationTask(student, FaceKDConfig(method="margin_distillation"), centres)
    student.eval()
    images, labels = _batch(teacher=False)
    with torch.no_grad():
        emb = student(images).embedding
        t = emb * 3.5  # teacher embedding with the student's direction
        m = task.margins(t, labels)
        z = student(images, labels, margin=m).logits
    want = 64.0 * F.normalize(t, dim=1) @ F.normalize(centres, dim=1).t()  # s·cos(teacher angle)
    off = torch.ones_like(z, dtype=torch.bool).scatter(1, labels[:, None], False)
    assert torch.allclose(z[off], want[off], atol=1e-3)
    cos_y = want.gather(1, labels[:, None]).squeeze(1) / 64.0
    assert torch.allclose(z.gather(1, labels[:, None]).squeeze(1), arcface_target_logit(cos_y, 64.0, m), atol=1e-3)
    assert torch.equal(student.head.weight, centres) and not student.head.weight.requires_grad


def test_angular_term_zero_iff_proportional():
    t = torch.randn(5, D)
    assert L.angular_term(t * 2.7, t).item() == pytest.approx(0.0, abs=1e-6)
    x = torch.randn(5, D, requires_grad=True)
    loss = L.angular_term(x, t)
    assert loss.item() > 0.1
    loss.backward()
    assert x.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ §5.8 guards


def test_triplet_margin_guard_all_zero():
    m = L.triplet_margins(torch.zeros(4), 0.2, 0.5)
    assert torch.equal(m, torch.full((4,), 0.2))


def test_md_margin_guard_nonpositive_max():
    d = torch.tensor([-0.3, -0.1, -0.2])
    m = L.md_margins(d, 0.2, 0.5)
    assert torch.isfinite(m).all() and (m >= 0).all() and (m <= 0.5).all()
    faithful = L.md_margins(d, 0.2, 0.5, faithful=True)  # D < 0 inverts the margins, no clamp
    assert faithful[0] > 0.5
    zero = L.md_margins(torch.zeros(3), 0.2, 0.5)
    assert torch.isfinite(zero).all()
    assert not torch.isfinite(L.md_margins(torch.zeros(3), 0.2, 0.5, faithful=True)).all()


# ------------------------------------------------------------------------------------------ margin_t


def test_margin_t_faithful_bug_is_coarse_label_ce():
    student = _student()
    cfg = FaceKDConfig(method="margin_t", faithful_bug=True, T=4.0)
    task = build_face_task(student, cfg)  # the released objective needs no teacher centres
    images, labels = _batch(teacher=False)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 5, 3])
    student.eval()
    out = task((images, labels))
    z = student(images, labels).logits
    assert out["task.cls"].item() == pytest.approx(F.cross_entropy(z, labels).item(), rel=1e-5)
    coarse = torch.tensor([0, 0, 0, 0, 1, 1, 1, 0])  # ⌊y/4⌋
    assert out["kd.margin_t"].item() == pytest.approx(F.cross_entropy(z / 4.0, coarse).item(), rel=1e-5)


def test_margin_t_intended_kd():
    z = torch.randn(4, K)
    y = torch.tensor([0, 1, 2, 3])
    ce, kd = L.margin_t_loss(z, z.clone(), y, 4.0, 0.95)
    assert kd.item() == pytest.approx(0.0, abs=1e-6)
    assert ce.item() == pytest.approx(0.05 * F.cross_entropy(z, y).item(), rel=1e-6)
    zt = torch.randn(4, K)
    _, kd = L.margin_t_loss(z, zt, y, 4.0, 0.95)
    q = F.softmax(zt / 4, 1)
    manual = 0.95 * 16 * (q * (q.log() - F.log_softmax(z / 4, 1))).sum(1).mean()
    assert kd.item() == pytest.approx(manual.item(), rel=1e-5)
    with pytest.raises(ValueError, match="centres"):
        build_face_task(_student(), FaceKDConfig(method="margin_t"))


# ------------------------------------------------------------------------------------------ mining


def test_mining_semi_hard_and_single_image_warning():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 3, 3])  # identity 2 has a single image
    emb = F.normalize(torch.randn(9, 8, generator=g), dim=1)
    with pytest.warns(UserWarning, match="single image"):
        trip = mine_triplets(emb, labels, alpha=2.0, generator=g)
    assert len(trip) > 0
    dist = torch.cdist(emb, emb).pow(2)
    a, p, n = trip.t()
    assert (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all()
    assert (a != 6).all() and (p != 6).all()  # the single-image identity never anchors
    assert (dist[a, p] < dist[a, n]).all() and (dist[a, n] - dist[a, p] < 2.0).all()
    # alpha = 0 admits no negative
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(mine_triplets(emb, labels, alpha=0.0, generator=g)) == 0


def test_identity_groups_skip_singletons_and_collate():
    images, labels = torch.zeros(7, 3, S, S), torch.tensor([0, 0, 0, 1, 2, 2, 2])
    base = [(images[i], labels[i], torch.full((D,), float(i))) for i in range(7)]
    with pytest.warns(UserWarning, match="single image"):
        groups = IdentityGroups(base, labels, imgs_per_id=2, seed=0)
    assert len(groups) == 2
    bag = collate_groups([groups[0], groups[1]])
    assert bag[0].shape == (4, 3, S, S) and bag[1].tolist() == [0, 0, 2, 2] and bag[2].shape == (4, D)
    with pytest.raises(ValueError, match="imgs_per_id"):
        IdentityGroups(base, labels, imgs_per_id=1)


# ------------------------------------------------------------------------------------------ every task steps


@pytest.mark.parametrize("method", ["arcface", "angular", "margin_t", "margin_distillation", "triplet_l2", "triplet_cos"])
def test_every_task_one_step(method):
    student = _student()
    cfg = FaceKDConfig(method=method, mining_alpha=4.0, triplets_per_batch=6)
    centres = torch.randn(K, D)
    task = build_face_task(student, cfg, centres)
    assert task.student is student
    batch = _batch(b=12)
    params = [p for p in task.parameters() if p.requires_grad]
    losses = task(batch)
    assert losses and all(k.startswith(("task.", "kd.")) for k in losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    if method == "margin_distillation":
        assert student.head.weight.grad is None  # frozen teacher centres
        assert "centres" not in task.state_dict()  # the teacher tensor is not saved with the task


def test_teacherless_batch_is_a_clear_error():
    task = build_face_task(_student(), FaceKDConfig(method="angular"))
    with pytest.raises(ValueError, match="teacher embeddings"):
        task(_batch(teacher=False))


def test_centre_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="num_classes"):
        build_face_task(_student(), FaceKDConfig(method="margin_distillation"), torch.randn(K + 1, D))
    with pytest.raises(ValueError, match="distill.s"):
        build_face_task(_student(), FaceKDConfig(method="arcface", s=30.0))
    with pytest.raises(ValueError, match="unknown face-recognition objective 'nope'"):
        build_face_task(_student(), FaceKDConfig(method="nope"))
    with pytest.raises(ValueError, match="'tdkd' is a detection distillation method, not a face-recognition"):
        build_face_task(_student(), FaceKDConfig(method="tdkd"))


# ------------------------------------------------------------------------------------------ configs


PAPER = ["arcface", "angular", "margin_t", "margin_distillation", "triplet_l2", "triplet_cos"]


FULL = 85_742
SMALL = 1_000  # classes for the default-speed variant: the 85,742-row head costs seconds per backward on CPU


@pytest.mark.parametrize(
    "method, num_classes",
    [("margin_distillation", FULL)]
    + [(m, SMALL) for m in PAPER]
    + [pytest.param(m, FULL, marks=pytest.mark.slow) for m in PAPER if m != "margin_distillation"],
)
def test_paper_config_one_step(method, num_classes):
    """Each MS1M config (512-d, 112 px, its optimizer) trains one step on a tiny batch; MarginDistillation
    at the full 85,742 classes by default, the others with the head cut to 1,000 classes (full size: slow)."""
    from detkd.config import load_config
    from detkd.engine.optim import build_optimizer
    from detkd.registry import build_model

    cfg = load_config(f"facerec/{method}_mobilefacenet_ms1m")
    assert cfg.task == "facerec" and cfg.model.num_classes == 85_742 and cfg.model.input_size == 112
    assert cfg.distill.s == 64 and cfg.distill.m == 0.5 and cfg.distill.teacher.name == "iresnet100"
    triplet = method.startswith("triplet")
    assert cfg.optim.lr == (1e-3 if triplet else 0.1)
    if triplet:
        assert cfg.train.batch_size == 400 and cfg.train.init_weights.endswith("arcface_mobilefacenet_ms1m/final.pt")
    else:
        assert cfg.train.batch_size == 256 and len(cfg.sched.milestones) == 3
    cfg.model.num_classes = num_classes
    torch.manual_seed(0)
    student = build_model(cfg.model)
    centres = torch.randn(num_classes, 512) if method in ("margin_t", "margin_distillation") else None
    task = build_face_task(student, cfg.distill, centres)
    opt = build_optimizer(cfg.optim, task)
    n = 4 if triplet else 2  # triplets need two identities with two images each
    images = torch.randint(0, 256, (n, 3, 112, 112)).float()
    last = num_classes - 1
    labels = torch.tensor([5, 5, last, last][:n] if triplet else [5, last])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 4-image bag may hold no semi-hard triplet
        losses = task((images, labels, torch.randn(n, 512)))
    total = sum(losses.values())
    assert torch.isfinite(total)
    opt.zero_grad()
    total.backward()
    opt.step()


@pytest.mark.slow
def test_paper_teacher_config_one_step():
    from detkd.config import load_config
    from detkd.registry import build_model

    cfg = load_config("facerec/teacher_iresnet100_ms1m")
    assert cfg.model.name == "iresnet100" and cfg.model.dropout == 0.4 and cfg.distill is None
    net = build_model(cfg.model)
    out = net(torch.randint(0, 256, (2, 3, 112, 112)).float(), torch.tensor([0, 85_741]))
    out.losses["task.cls"].backward()
    assert torch.isfinite(out.losses["task.cls"])


def test_synthids_configs_are_consistent():
    from detkd.config import list_configs, load_config

    names = [n for n in list_configs() if n.startswith("facerec/") and n.endswith("_synthids")]
    assert len(names) == 7
    for name in names:
        cfg = load_config(name)
        assert cfg.task == "facerec" and cfg.data.img_size == cfg.model.input_size
        if cfg.distill is not None:
            assert cfg.distill.teacher.num_classes == cfg.model.num_classes
            assert cfg.distill.teacher.embedding_dim == cfg.model.embedding_dim
            if cfg.distill.method.startswith("triplet"):
                assert cfg.train.batch_size == cfg.distill.bag_size // cfg.distill.imgs_per_id


def test_md_repins_teacher_centres_after_init_weights():
    student = _student()
    centres = torch.randn(K, D)
    task = build_face_task(student, FaceKDConfig(method="margin_distillation"), centres)
    other = _student(seed=1).state_dict()  # e.g. an ArcFace student loaded through train.init_weights
    student.load_state_dict(other)
    assert not torch.equal(student.head.weight, centres)
    task.train()
    assert torch.equal(student.head.weight, centres) and not student.head.weight.requires_grad
