"""RetinaNet and GFL learn: a few SGD steps on one synthetic two-object scene (slow: about a minute on 2 cores)."""
import pytest
import torch
from torchvision.ops import box_iou

from detkd.models.gfl import gfl
from detkd.models.retinanet import retinanet


def scene():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 128, 128, generator=g) * 60
    x[0, 0, 24:90, 20:70] = 230
    x[0, 2, 30:60, 80:120] = 230
    return x, [{"boxes": torch.tensor([[20.0, 24.0, 70.0, 90.0], [80.0, 30.0, 120.0, 60.0]]),
                "labels": torch.tensor([1, 2])}]


def fit(m, steps):
    x, t = scene()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    first = None
    for _ in range(steps):
        m.train()
        out = m(x, t)
        loss = sum(out.losses.values())
        first = first or {k: v.item() for k, v in out.losses.items()}
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        last = m(x, t, decode=True)
    return first, {k: v.item() for k, v in last.losses.items()}, last.dets[0], t[0]


@pytest.mark.slow
def test_gfl_overfits_one_scene():
    torch.manual_seed(0)
    m = gfl(depth=18, num_classes=2, fpn_channels=32, stacked_convs=2, gn_groups=8, frozen_stages=0, norm_eval=False)
    first, last, dets, gt = fit(m, 50)
    assert last["task.box"] < 0.5 * first["task.box"] and last["task.dfl"] < first["task.dfl"]
    assert len(dets["boxes"]) and box_iou(dets["boxes"][:1], gt["boxes"]).max() > 0.7
    assert dets["scores"][0] > 0.5


@pytest.mark.slow
def test_retinanet_box_loss_falls():
    torch.manual_seed(0)
    m = retinanet(depth=18, num_classes=2, fpn_channels=32, num_convs=2)
    first, last, _, _ = fit(m, 30)
    assert last["task.box"] < 0.7 * first["task.box"]
