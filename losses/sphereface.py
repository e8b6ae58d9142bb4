"""SphereFace (A-Softmax): a multiplicative angular margin, with the paper's lambda annealing.

Liu, Wen, Yu, Li, Raj, Song, "SphereFace: Deep Hypersphere Embedding for Face Recognition",
CVPR 2017. Paper values: m = 4; lambda annealed from 1000 down to 5.

    psi(theta) = (-1)^k cos(m theta) - 2k,   theta in [k pi / m, (k + 1) pi / m],  k = 0 .. m-1
    target logit = s * (lambda cos theta + psi(theta)) / (1 + lambda)
    lambda = max(lambda_min, base * (1 + gamma * t') ** -power)
             (base 1000, gamma 0.12, power 1, lambda_min 5 as in the authors' code)

The authors count t in absolute iterations: lambda reaches lambda_min after 1,658 of their 28,000
(5.9 % of training). Counted the same way, a short run (the grid's 466 steps) would end at
lambda = 17.6 and train mostly NormFace. Here t' is training *progress* mapped onto that schedule,
t' = 1658 * t / (anneal_fraction * total_steps) with anneal_fraction = 0.059, so every budget has the
paper's shape: lambda_min from 5.9 % of training on. Outside training (validation, evaluation)
lambda = lambda_min: validation losses of different epochs then measure the same objective, which
keeps best-checkpoint selection by validation loss meaningful while lambda moves.

psi is continuous and decreasing on [0, pi]. Unlike the paper, features are L2-normalised and
scaled by s like the rest of this family (the 'normalised SphereFace' of the CosFace/ArcFace
comparisons), so that every head here differs only in its target logit. cos(m theta) is the
Chebyshev polynomial T_m(cos theta), which keeps the gradient exact; k (piecewise constant) comes
from acos without gradient. The step counter `t` and the run length `total` are buffers, so they are
checkpointed and resumed. Without a known length (total = 0) t counts absolute steps, as the paper.
"""

from __future__ import annotations

import math

import torch

from losses.base import CosineMarginHead

PAPER_ANNEAL_STEPS, PAPER_TOTAL_STEPS = 1658, 28000  # sphereface_solver: max_iter 28000


def chebyshev(m: int, c: torch.Tensor) -> torch.Tensor:
    """T_m(c) = cos(m * acos(c)) by the recurrence T_{n+1} = 2c T_n - T_{n-1}."""
    prev, cur = torch.ones_like(c), c
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2 * c * cur - prev
    return cur


# read by losses/registry.py without running this file (ast.literal_eval): literals only
SPEC = {
    "name": "sphereface", "head": "SphereFace", "paper": "Liu et al., CVPR 2017",
    "formula": "s (lambda cos(theta_y) + psi(theta_y)) / (1 + lambda)",
    "color": "tab:red", "grid": True,
    "toy": {"scale": 10.0, "margin": 2.0},
    "params": {
        "scale": {"shared": "scale", "default": 30.0},
        "margin": {"meaning": "multiplicative angular margin m: psi uses cos(m theta)", "unit": "integer multiplier",
                   "default": 4, "low": 1, "high": 10, "integer": True}},
}
DEFAULT = {f: p["default"] for f, p in SPEC["params"].items()}  # each default written once: in SPEC


class SphereFace(CosineMarginHead):
    def __init__(self, in_features: int, n_class: int, scale: float = DEFAULT["scale"], margin: int = DEFAULT["margin"],
                 base: float = 1000.0, gamma: float = 0.12, power: float = 1.0, lambda_min: float = 5.0,
                 anneal_fraction: float = PAPER_ANNEAL_STEPS / PAPER_TOTAL_STEPS) -> None:
        super().__init__(in_features, n_class, scale)
        self.margin = int(margin)
        self.base, self.gamma, self.power, self.lambda_min = base, gamma, power, lambda_min
        self.anneal_fraction = anneal_fraction
        self.register_buffer("t", torch.zeros((), dtype=torch.long))
        self.register_buffer("total", torch.zeros((), dtype=torch.long))

    def set_total_steps(self, n: int) -> None:
        self.total.fill_(n)

    @property
    def lam(self) -> float:
        if not self.training:
            return self.lambda_min
        # steps at which the paper's formula reaches lambda_min (1,658 for the defaults)
        reach = ((self.base / self.lambda_min) ** (1 / self.power) - 1) / self.gamma
        t = float(self.t)
        if int(self.total) > 0:
            t *= reach / (self.anneal_fraction * int(self.total))
        return max(self.lambda_min, self.base * (1 + self.gamma * t) ** -self.power)

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        c = cos_y.clamp(-1.0, 1.0)
        with torch.no_grad():
            k = torch.floor(self.margin * torch.acos(c) / math.pi).clamp_(0, self.margin - 1)
        sign = 1.0 - 2.0 * torch.remainder(k, 2)
        psi = sign * chebyshev(self.margin, c) - 2.0 * k
        lam = self.lam
        if self.training:
            self.t += 1
        return (lam * cos_y + psi) / (1.0 + lam)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", margin={self.margin}, lambda_min={self.lambda_min}"
