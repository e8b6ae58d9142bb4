"""The written-out ResNet18 is torchvision's: same weights from the same seed, same outputs, same keys."""

from __future__ import annotations

import itertools

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


@pytest.mark.parametrize("dim", [2, 3])
def test_the_toy_network_gives_signed_features_of_its_dimension(dim: int) -> None:
    """LeNet++-style: [B, 1, 28, 28] -> [B, dim], no activation after the last layer (features in every
    quadrant), trainable end to end; refused by name only when unknown."""
    torch.manual_seed(0)
    net = get_model("toy", dim)
    x = torch.randn(64, 1, 28, 28)
    out = net(x)
    assert out.shape == (64, dim) and out.requires_grad
    out.square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    with torch.no_grad():  # the output is the last linear layer's, nothing after it: flipping it flips the sign
        net.fc.weight.neg_()
        net.fc.bias.neg_()
        assert torch.allclose(net(x).detach(), -out.detach(), atol=1e-5)
        net.fc.weight.neg_()
        net.fc.bias.neg_()
    assert sum(p.numel() for p in net.parameters()) < 400_000  # a toy: far below ResNet18's 11 M
    with pytest.raises(ValueError, match="available: resnet18, toy"):
        get_model("vgg")


@pytest.mark.parametrize("cin,cout,k,stride,pad,side", [
    (512, 512, 3, 1, 1, 2),   # layer4 at 28 px: a 2x2 map
    (256, 512, 3, 2, 1, 4),   # layer4's first, strided
    (256, 512, 1, 2, 0, 4),   # its 1x1 projection
    (8, 16, 3, 1, 1, 5),      # odd map
    (4, 6, 3, 2, 1, 7),
])
def test_matmul_convolution_equals_the_library_in_float64(cin: int, cout: int, k: int, stride: int, pad: int,
                                                          side: int) -> None:
    """Forward and both gradients of MatmulConv2d against F.conv2d, in float64, NCHW and NHWC input and weight
    (an NHWC weight takes the column order that keeps its matrix a view)."""
    from models.matmul_conv import MatmulConv2d, to_matmul

    torch.manual_seed(0)
    lib = torch.nn.Conv2d(cin, cout, k, stride, pad, bias=False).double()
    mm = to_matmul(lib)
    assert isinstance(mm, MatmulConv2d) and mm.weight is lib.weight
    for layout, weight_layout in itertools.product((torch.contiguous_format, torch.channels_last), repeat=2):
        lib.weight.data = lib.weight.data.contiguous(memory_format=weight_layout)
        x = torch.randn(3, cin, side, side, dtype=torch.float64).contiguous(memory_format=layout)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = lib(xa), mm(xb)
        torch.testing.assert_close(yb, ya, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(ya)
        ga = torch.autograd.grad(ya, (xa, lib.weight), g)
        gb = torch.autograd.grad(yb, (xb, mm.weight), g)
        for a, b in zip(ga, gb, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


def test_matmul_convolution_keeps_the_state_dict_and_the_parameters() -> None:
    """Swapped in place: the same keys and Parameter objects (optimiser and EMA stay valid), same output."""
    from models.matmul_conv import MatmulConv2d, swap

    torch.manual_seed(0)
    net = get_model("resnet18", 32).eval()
    x = torch.randn(2, 1, 28, 28)
    before, params = net(x), list(net.parameters())
    keys = list(net.state_dict())
    names = {n for n, m in net.named_modules() if n.startswith("trunk.layer4") and isinstance(m, torch.nn.Conv2d)}
    assert swap(net, names) == 5  # four 3x3 and the 1x1 projection
    assert sum(isinstance(m, MatmulConv2d) for m in net.modules()) == 5
    assert list(net.state_dict()) == keys and all(a is b for a, b in zip(params, net.parameters(), strict=True))
    torch.testing.assert_close(net(x), before, rtol=1e-4, atol=1e-4)
