"""The rest of the margin family: per-sample float64 references, gradchecks, equivalences."""

from __future__ import annotations

import math

import pytest
import torch

from losses import CombinedMargin, CosFace, NormFace, SphereFace, SubCenterArcFace, build_head, paper_defaults, registry
from losses.arcface import ArcFace


def cosines(x: torch.Tensor, w: torch.Tensor) -> list[list[float]]:
    """Per pair, by hand: <x, w> / (|x| |w|)."""
    def norm(v):
        return math.sqrt(sum(float(a) ** 2 for a in v))
    return [[sum(float(a) * float(b) for a, b in zip(xi, wj, strict=True)) / (norm(xi) * norm(wj)) for wj in w]
            for xi in x]


def naive(x, w, y, s, psi) -> torch.Tensor:
    c = cosines(x, w)
    return torch.tensor([[s * (psi(c[i][j]) if j == int(y[i]) else c[i][j]) for j in range(len(w))]
                         for i in range(len(x))], dtype=torch.float64)


def data(n_class: int = 5, d: int = 7, n: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, n_class, (n,), generator=g)


def test_normface_reference() -> None:
    x, y = data()
    h = NormFace(7, 5, scale=16.0).double()
    torch.testing.assert_close(h(x, y), naive(x, h.weight.detach(), y, 16.0, lambda c: c))


def test_cosface_reference() -> None:
    x, y = data()
    h = CosFace(7, 5, scale=64.0, margin=0.35).double()
    torch.testing.assert_close(h(x, y), naive(x, h.weight.detach(), y, 64.0, lambda c: c - 0.35))


@pytest.mark.parametrize("m1,m2,m3", [(1.0, 0.3, 0.2), (1.0, 0.5, 0.0), (1.35, 0.25, 0.1), (2.0, 0.0, 0.0)])
def test_combined_reference(m1: float, m2: float, m3: float) -> None:
    x, y = data(seed=1)
    h = CombinedMargin(7, 5, scale=8.0, m1=m1, m2=m2, m3=m3).double()
    theta0 = (math.pi - m2) / m1
    c_fb = max(m2 * math.sin(m2), 1 + math.cos(theta0))

    def psi(c: float) -> float:
        t = math.acos(max(-1 + 1e-7, min(1 - 1e-7, c)))
        return math.cos(m1 * t + m2) - m3 if t <= theta0 else c - m3 - c_fb
    torch.testing.assert_close(h(x, y), naive(x, h.weight.detach(), y, 8.0, psi))


def test_sphereface_reference_and_annealing() -> None:
    x, y = data(seed=2)
    h = SphereFace(7, 5, scale=10.0, margin=4).double()

    def psi_at(lam: float):
        def psi(c: float) -> float:
            t = math.acos(c)
            k = min(3, int(4 * t / math.pi))
            return (lam * c + (-1) ** k * math.cos(4 * t) - 2 * k) / (1 + lam)
        return psi

    torch.testing.assert_close(h(x, y), naive(x, h.weight.detach(), y, 10.0, psi_at(1000.0)))
    assert int(h.t) == 1 and h.lam == pytest.approx(1000 / 1.12)
    h.t.fill_(10_000)
    assert h.lam == 5.0
    torch.testing.assert_close(h(x, y), naive(x, h.weight.detach(), y, 10.0, psi_at(5.0)))
    h.eval()
    h(x, y)
    assert int(h.t) == 10_001  # only training steps advance the annealing


def test_subcenter_reference() -> None:
    x, y = data(seed=3)
    h = SubCenterArcFace(7, 5, scale=12.0, margin=0.5, subcenters=3).double()
    w = h.weight.detach()
    c_all = cosines(x, w)
    want = torch.empty(len(x), 5, dtype=torch.float64)
    for i in range(len(x)):
        for j in range(5):
            c = max(c_all[i][j * 3:(j + 1) * 3])
            if j == int(y[i]):
                t = math.acos(c)
                c = math.cos(t + 0.5) if t + 0.5 <= math.pi else c - 0.5 * math.sin(0.5)
            want[i, j] = 12.0 * c
    torch.testing.assert_close(h(x, y), want)
    assert h.weight.shape == (15, 7)


def test_combined_reduces_to_arcface_and_cosface() -> None:
    x, y = data(seed=4)
    for m in (0.2, 0.5, 1.0):
        arc = ArcFace(7, 5, scale=30.0, margin=m).double()
        comb = CombinedMargin(7, 5, scale=30.0, m1=1.0, m2=m, m3=0.0).double()
        comb.weight.data.copy_(arc.weight.data)
        xx = torch.cat([x, -arc.weight.detach()[y]])  # include theta + m > pi
        yy = torch.cat([y, y])
        torch.testing.assert_close(comb(xx, yy), arc(xx, yy), atol=1e-6, rtol=1e-6)
        cos = CosFace(7, 5, scale=30.0, margin=m).double()
        comb = CombinedMargin(7, 5, scale=30.0, m1=1.0, m2=0.0, m3=m).double()
        comb.weight.data.copy_(cos.weight.data)
        torch.testing.assert_close(comb(xx, yy), cos(xx, yy), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", [n for n in registry.names() if n != "softmax"])
def test_gradcheck_every_margin_head(name: str) -> None:
    torch.manual_seed(0)
    h = build_head(name, 5, 3, scale=3.0).double()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1])
    w = h.weight.detach().clone().requires_grad_(True)
    if name == "sphereface":
        h.eval()  # freeze the annealing counter so every gradcheck evaluation sees the same lambda

    def f(a: torch.Tensor, ww: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(h, {"weight": ww}, (a, y))
    assert torch.autograd.gradcheck(f, (x, w))


@pytest.mark.parametrize("name", [n for n in registry.names() if n not in ("softmax", "subcenter_arcface")])
def test_target_logit_non_increasing(name: str) -> None:
    h = build_head(name, 2, 2).double().eval()
    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    psi = h.target_logit(torch.cos(theta))
    assert bool((psi[1:] - psi[:-1] <= 1e-9).all())


def test_paper_defaults() -> None:
    assert paper_defaults("cosface") == {"scale": 64.0, "margin": 0.35}
    assert paper_defaults("arcface") == {"scale": 64.0, "margin": 0.5}
    assert paper_defaults("sphereface")["margin"] == 4
    assert paper_defaults("combined")["m2"] == 0.3 and paper_defaults("subcenter_arcface")["subcenters"] == 3
