"""The written-out ResNet18 is torchvision's: same weights from the same seed, same outputs, same keys."""

from __future__ import annotations

import pytest
import torch
import torchvision

from models import get_model
from models.resnet import Embedder, ResNet18


def test_trunk_equals_torchvision_bit_for_bit() -> None:
    torch.manual_seed(7)
    ours = ResNet18()
    torch.manual_seed(7)
    theirs = torchvision.models.resnet18(weights=None)
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=0, atol=0)


@pytest.mark.parametrize("stem", ["s2", "cifar", "imagenet"])
def test_embedder_builds_what_the_torchvision_version_built(stem: str) -> None:
    """Seeded builds of the embedder match one made around torchvision's trunk (the earlier code)."""
    torch.manual_seed(3)
    ours = get_model("resnet18", 64, stem)
    torch.manual_seed(3)
    net = torchvision.models.resnet18(weights=None)
    if stem == "imagenet":
        net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    else:
        net.conv1 = torch.nn.Conv2d(1, 64, 3, 2 if stem == "s2" else 1, 1, bias=False)
        net.maxpool = torch.nn.Identity()
    net.fc = torch.nn.Identity()
    ref = Embedder.__new__(Embedder)
    torch.nn.Module.__init__(ref)
    ref.trunk, ref.fc, ref.bn = net, torch.nn.Linear(512, 64), torch.nn.BatchNorm1d(64)
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
