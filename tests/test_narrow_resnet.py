"""Width-scaled ResNet trunks (the CPU-sized light variants): same key layout, scaled channels, width 1 untouched."""
import pytest
import torch
from torchvision.models import resnet18

from detkd.models.faster_rcnn import faster_rcnn_fpn
from detkd.models.gfl import gfl
from detkd.models.resnet_fpn import narrow_resnet
from detkd.models.retinanet import retinanet


def test_width_one_is_torchvision():
    torch.manual_seed(0)
    a = narrow_resnet(18, 1.0).state_dict()
    torch.manual_seed(0)
    b = resnet18(weights=None).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_half_width_keeps_keys_and_halves_channels():
    a, full = narrow_resnet(18, 0.5).state_dict(), resnet18(weights=None).state_dict()
    assert list(a) == list(full)
    assert a["conv1.weight"].shape == (32, 3, 7, 7) and a["layer4.1.conv2.weight"].shape == (256, 256, 3, 3)
    with pytest.raises(ValueError, match="width must be in"):
        narrow_resnet(18, 1.5)


@pytest.mark.parametrize("build", [lambda: retinanet(depth=18, num_classes=3, fpn_channels=16, num_convs=1, width=0.25),
                                   lambda: gfl(depth=18, num_classes=3, fpn_channels=16, stacked_convs=1, gn_groups=4, frozen_stages=0,
                                               width=0.25),
                                   lambda: faster_rcnn_fpn(depth=18, norm="bn", fpn_channels=16, hidden=32,
                                                           num_classes=3, width=0.25, trainable_layers=5)])
def test_narrow_detectors_train(build):
    m = build()
    x = torch.rand(1, 3, 128, 128) * 255
    t = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([1])}]
    loss = sum(m(x, t).losses.values())
    loss.backward()
    assert torch.isfinite(loss) and m.backbone.body.conv1.weight.grad.abs().sum() > 0
    assert m.backbone.body.conv1.weight.shape[0] == 16
