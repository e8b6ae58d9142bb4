"""ArcFace: additive angular margin loss.

Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
CVPR 2019. Paper values: s = 64, m = 0.5 (trainArcFace.py defaults to s = 16, chosen on validation).

    L = -log( exp(s cos(theta_y + m)) / (exp(s cos(theta_y + m)) + sum_{j != y} exp(s cos theta_j)) )

cos(theta + m) is computed as cos(theta) cos(m) - sin(theta) sin(m) with
sin(theta) = sqrt(1 - cos^2 theta), all inside autograd, so the gradient is exact (no arccos under
no_grad as in some reference code). Near |cos| = 1 the sqrt is clamped at 1e-12 below.

theta + m > pi: cos(theta + m) would start to *increase* again past theta = pi - m, rewarding
the network for pushing the true class further away. As in the paper's reference implementation
we switch, for theta > pi - m, to the CosFace-like penalty cos(theta) - m sin(m), which keeps the
target logit monotonically non-increasing on [0, pi] (there is a small downward step at
theta = pi - m, never an upward one). That holds while m sin(m) >= 1 - cos(m), i.e. m <~ 2.33; for
larger margins the reference's step would go *up*, so the penalty becomes 1 - cos(m), which makes
the curve continuous there instead. For every usual margin the two rules are identical.
"""

from __future__ import annotations

import math

import torch

from losses.base import CosineMarginHead

# read by losses/registry.py without running this file (ast.literal_eval): literals only
SPEC = {
    "name": "arcface", "head": "ArcFace", "paper": "Deng et al., CVPR 2019",
    "formula": "s cos(theta_y + m)",
    "color": "tab:blue", "grid": True,
    "toy": {"scale": 10.0, "margin": 0.2},
    "params": {
        "scale": {"shared": "scale", "default": 64.0},
        "margin": {"meaning": "additive angular margin m: the target logit is cos(theta + m)", "unit": "radians",
                   "default": 0.5, "low": 0.0, "high": 3.141592653589793, "high_open": True}},
}
DEFAULT = {f: p["default"] for f, p in SPEC["params"].items()}  # each default written once: in SPEC


class ArcFace(CosineMarginHead):
    def __init__(self, in_features: int, n_class: int, scale: float = DEFAULT["scale"],
                 margin: float = DEFAULT["margin"]) -> None:
        super().__init__(in_features, n_class, scale)
        self.margin = float(margin)
        self.cos_m, self.sin_m = math.cos(margin), math.sin(margin)
        self.threshold = math.cos(math.pi - margin)  # cos(theta) above this <=> theta + m <= pi
        # reference: m sin(m); never less than 1 - cos(m), so no upward jump at theta = pi - m
        self.fallback = max(math.sin(math.pi - margin) * margin, 1.0 - math.cos(margin))

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        sin_y = torch.sqrt((1.0 - cos_y * cos_y).clamp_min(1e-12))
        shifted = cos_y * self.cos_m - sin_y * self.sin_m
        return torch.where(cos_y > self.threshold, shifted, cos_y - self.fallback)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", margin={self.margin}"
