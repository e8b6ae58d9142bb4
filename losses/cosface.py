"""CosFace (large margin cosine loss): an additive margin on the cosine.

Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu, "CosFace: Large Margin Cosine Loss for Deep Face
Recognition", CVPR 2018. Paper values: s = 64, m = 0.35.

    L = -log( exp(s (cos theta_y - m)) / (exp(s (cos theta_y - m)) + sum_{j != y} exp(s cos theta_j)) )

cos theta - m is monotonic in theta on all of [0, pi]: no special case is needed.
"""

from __future__ import annotations

import torch

from losses.base import CosineMarginHead

# read by losses/registry.py without running this file (ast.literal_eval): literals only
SPEC = {
    "name": "cosface", "head": "CosFace", "paper": "Wang et al., CVPR 2018",
    "formula": "s (cos(theta_y) - m)",
    "color": "tab:purple", "grid": True,
    "toy": {"scale": 10.0, "margin": 0.15},
    "params": {
        "scale": {"shared": "scale", "default": 64.0},
        "margin": {"meaning": "additive cosine margin m: the target logit is cos(theta) - m", "unit": "cosine",
                   "default": 0.35, "low": 0.0, "high": 3.141592653589793, "high_open": True}},
}
DEFAULT = {f: p["default"] for f, p in SPEC["params"].items()}  # each default written once: in SPEC


class CosFace(CosineMarginHead):
    def __init__(self, in_features: int, n_class: int, scale: float = DEFAULT["scale"],
                 margin: float = DEFAULT["margin"]) -> None:
        super().__init__(in_features, n_class, scale)
        self.margin = float(margin)

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        return cos_y - self.margin

    def extra_repr(self) -> str:
        return super().extra_repr() + f", margin={self.margin}"
