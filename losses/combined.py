"""Combined margin: the ArcFace paper's unified form cos(m1 theta + m2) - m3.

Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
CVPR 2019, section 3.3 (paper's example: m1 = 1, m2 = 0.3, m3 = 0.2).

    psi(theta) = cos(m1 theta + m2) - m3            while m1 theta + m2 <= pi
    psi(theta) = cos(theta) - m3 - c                past that point, theta0 = (pi - m2) / m1

(1, m, 0) is ArcFace, (1, 0, m) is CosFace, (m, 0, 0) is the normalised SphereFace margin
without annealing. theta comes from acos of the clamped cosine (clamped to 1e-7 inside [-1, 1]
so the derivative stays finite), inside autograd. The fallback penalty c = max(m2 sin m2,
1 + cos theta0) is ArcFace's rule (`losses/arcface.py`) generalised to m1 != 1: psi never steps up
at theta0, so it stays non-increasing on [0, pi].
"""

from __future__ import annotations

import math

import torch

from losses.base import CosineMarginHead

# read by losses/registry.py without running this file (ast.literal_eval): literals only
SPEC = {
    "name": "combined", "head": "CombinedMargin", "paper": "Deng et al., CVPR 2019 (combined margin)",
    "formula": "s (cos(m1 theta_y + m2) - m3)",
    "color": "tab:brown", "grid": False,
    "params": {
        "scale": {"shared": "scale", "default": 64.0},
        "m1": {"meaning": "multiplicative angular margin m1 (SphereFace-like)", "unit": "multiplier",
               "default": 1.0, "low": 1.0, "high": 10.0},
        "m2": {"meaning": "additive angular margin m2 (ArcFace-like)", "unit": "radians",
               "default": 0.3, "low": 0.0, "high": 3.141592653589793, "high_open": True},
        "m3": {"meaning": "additive cosine margin m3 (CosFace-like)", "unit": "cosine",
               "default": 0.2, "low": 0.0, "high": 2.0}},
}
DEFAULT = {f: p["default"] for f, p in SPEC["params"].items()}  # each default written once: in SPEC


class CombinedMargin(CosineMarginHead):
    def __init__(self, in_features: int, n_class: int, scale: float = DEFAULT["scale"], m1: float = DEFAULT["m1"],
                 m2: float = DEFAULT["m2"], m3: float = DEFAULT["m3"]) -> None:
        super().__init__(in_features, n_class, scale)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)
        self.theta0 = (math.pi - m2) / m1
        self.fallback = max(m2 * math.sin(m2), 1.0 + math.cos(self.theta0))

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        theta = torch.acos(cos_y.clamp(-1 + 1e-7, 1 - 1e-7))
        inside = torch.cos(self.m1 * theta + self.m2) - self.m3
        return torch.where(theta <= self.theta0, inside, cos_y - self.m3 - self.fallback)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", m1={self.m1}, m2={self.m2}, m3={self.m3}"
