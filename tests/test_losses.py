"""Heads against naive per-sample float64 references, exact gradients, margin edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from losses import ArcFace, Softmax, SphereFace, build_head


def naive_arcface(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, s: float, m: float) -> torch.Tensor:
    """One sample, one class at a time, straight from the paper (with the pi - m fallback)."""
    out = torch.empty(len(x), len(w), dtype=torch.float64)
    for i in range(len(x)):
        xi = x[i] / math.sqrt(sum(float(v) ** 2 for v in x[i]))
        for j in range(len(w)):
            wj = w[j] / math.sqrt(sum(float(v) ** 2 for v in w[j]))
            c = float(sum(float(a) * float(b) for a, b in zip(xi, wj, strict=True)))
            theta = math.acos(max(-1.0, min(1.0, c)))
            if j == int(y[i]):
                c = math.cos(theta + m) if theta + m <= math.pi else c - max(m * math.sin(m), 1 - math.cos(m))
            out[i, j] = s * c
    return out


@pytest.mark.parametrize("m", [0.0, 0.2, 0.5, 1.2])
def test_arcface_matches_naive_reference(m: float) -> None:
    torch.manual_seed(0)
    head = ArcFace(16, 7, scale=30.0, margin=m).double()
    x = torch.randn(12, 16, dtype=torch.float64)
    y = torch.randint(0, 7, (12,))
    got = head(x, y)
    want = naive_arcface(x, head.weight.detach(), y, 30.0, m)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


def test_arcface_large_angles_use_fallback() -> None:
    """Embeddings pointing away from their class centre exercise theta + m > pi."""
    torch.manual_seed(1)
    head = ArcFace(8, 3, scale=10.0, margin=1.0).double()
    y = torch.tensor([0, 1, 2])
    x = -head.weight.detach()[y] + 0.05 * torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close(head(x, y), naive_arcface(x, head.weight.detach(), y, 10.0, 1.0))


def test_softmax_matches_naive_reference() -> None:
    torch.manual_seed(0)
    head = Softmax(5, 4).double()
    x = torch.randn(6, 5, dtype=torch.float64)
    w, b = head.fc.weight.detach(), head.fc.bias.detach()
    want = torch.tensor([[sum(float(x[i, k]) * float(w[j, k]) for k in range(5)) + float(b[j])
                          for j in range(4)] for i in range(6)], dtype=torch.float64)
    torch.testing.assert_close(head(x, torch.zeros(6, dtype=torch.long)), want)
    torch.testing.assert_close(head(x), want)


def test_arcface_gradcheck() -> None:
    """Analytic against numerical gradients (float64), for inputs and class weights, on both branches of the
    target logit: theta_y + m <= pi (cos(theta + m)) and beyond (the monotonic fallback)."""
    torch.manual_seed(0)
    head = ArcFace(6, 4, scale=4.0, margin=0.5).double()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    w = head.weight.detach()
    x = torch.randn(6, 6, dtype=torch.float64) * 0.1 + torch.cat([w[y[:3]], -w[y[3:]]])  # near, then opposite
    cos_y = torch.nn.functional.cosine_similarity(x, w[y])
    assert bool((cos_y > head.threshold).any()) and bool((cos_y < head.threshold).any())  # both branches
    assert torch.autograd.gradcheck(lambda a, wt: _with_weight(head, wt)(a, y),
                                    (x.requires_grad_(True), w.clone().requires_grad_(True)))


def _with_weight(head: ArcFace, w: torch.Tensor):
    def f(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(head, {"weight": w}, (a, y))
    return f


def test_margin_zero_equals_scaled_cosine() -> None:
    torch.manual_seed(0)
    head = ArcFace(10, 5, scale=16.0, margin=0.0)
    x = torch.randn(8, 10)
    y = torch.randint(0, 5, (8,))
    torch.testing.assert_close(head(x, y), head(x), atol=1e-5, rtol=1e-5)
    cos = torch.nn.functional.normalize(x) @ torch.nn.functional.normalize(head.weight.detach()).T
    torch.testing.assert_close(head(x), 16.0 * cos)


@pytest.mark.parametrize("m", [0.1, 0.5, 1.0, 2.0, 3.0])
def test_target_logit_monotonic_over_0_pi(m: float) -> None:
    head = ArcFace(2, 2, scale=1.0, margin=m).double()
    theta = torch.linspace(0, math.pi, 20001, dtype=torch.float64)
    psi = head.target_logit(torch.cos(theta))
    assert bool((psi[1:] - psi[:-1] <= 1e-12).all()), "target logit must never increase with theta"
    assert float(psi[0]) == pytest.approx(math.cos(m), abs=1e-6)


def test_margin_lowers_target_logit_only() -> None:
    torch.manual_seed(0)
    head = ArcFace(10, 5, margin=0.5)
    x, y = torch.randn(8, 10), torch.randint(0, 5, (8,))
    with_m, without = head(x, y), head(x)
    mask = torch.nn.functional.one_hot(y, 5).bool()
    assert torch.equal(with_m[~mask], without[~mask])
    assert bool((with_m[mask] < without[mask]).all())


def test_build_head_and_errors() -> None:
    assert isinstance(build_head("arcface", 8, 3, scale=10, margin=0.3), ArcFace)
    assert isinstance(build_head("softmax", 8, 3, scale=10, margin=0.3), Softmax)
    with pytest.raises(ValueError, match="unknown loss"):
        build_head("nope", 8, 3)
    with pytest.raises(ValueError, match="margin=4.0 is out of range for arcface"):
        build_head("arcface", 8, 3, margin=4.0)
    with pytest.raises(ValueError, match="scale=0.0 is out of range"):
        build_head("cosface", 8, 3, scale=0.0)
    with pytest.raises(ValueError, match="integer"):
        build_head("sphereface", 8, 3, margin=2.5)


def test_sphereface_lambda_follows_progress_and_validation_uses_the_final_objective() -> None:
    head = SphereFace(8, 4)
    head.set_total_steps(466)  # the margin-loss grid's 2 epochs
    head.train()
    cos = torch.zeros(3, 1)
    lams = []
    for _ in range(466):
        lams.append(head.lam)
        head.target_logit(cos)  # one training forward = one step
    assert lams[0] == 1000.0
    reach = math.ceil(0.059 * 466)  # the paper reaches lambda_min at 1,658 of 28,000 steps
    assert lams[reach + 1] == 5.0 and lams[reach // 2] > 5.0
    assert lams[-1] == 5.0  # counted in absolute steps (the old rule) it ended at 17.6
    assert all(a >= b for a, b in zip(lams, lams[1:], strict=False))
    head.t.zero_()
    head.eval()
    assert head.lam == 5.0  # validation losses of different epochs are comparable


def test_sphereface_without_a_known_length_counts_absolute_steps() -> None:
    head = SphereFace(8, 4).train()
    head.t.fill_(1658)
    assert head.lam == pytest.approx(5.0, rel=1e-3)
