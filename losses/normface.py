"""NormFace: softmax on L2-normalised features and weights with a fixed scale, no margin.

Wang, Xiang, Cheng, Yuille, "NormFace: L2 Hypersphere Embedding for Face Verification",
ACM Multimedia 2017.

    L = -log( exp(s cos theta_y) / sum_j exp(s cos theta_j) )

The margin-free member of the family: every other cosine-margin head reduces to it at margin 0.
"""

from __future__ import annotations

from losses.base import CosineMarginHead

# read by losses/registry.py without running this file (ast.literal_eval): literals only
SPEC = {
    "name": "normface", "head": "NormFace", "paper": "Wang et al., ACM MM 2017",
    "formula": "s cos(theta_y)",
    "color": "tab:green", "grid": True,
    "toy": {"scale": 10.0},
    "params": {
        "scale": {"shared": "scale", "default": 30.0}},
}
DEFAULT = {f: p["default"] for f, p in SPEC["params"].items()}  # each default written once: in SPEC


class NormFace(CosineMarginHead):
    def __init__(self, in_features: int, n_class: int, scale: float = DEFAULT["scale"]) -> None:
        super().__init__(in_features, n_class, scale)
