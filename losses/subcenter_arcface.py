"""Sub-center ArcFace: K sub-centres per class, the closest one carries the ArcFace margin.

Deng, Guo, Liu, Xue, Kotsia, Zafeiriou, "Sub-center ArcFace: Boosting Face Recognition by
Large-scale Noisy Web Faces", ECCV 2020. Paper values: K = 3, s = 64, m = 0.5.

    cos theta_j = max_k <x/|x|, W_{j,k}/|W_{j,k}|>        (k = 1..K)
    then ArcFace on these per-class cosines: s cos(theta_y + m) for y, s cos theta_j otherwise.

`weight` has shape [n_class * K, in_features] (class-major: rows j*K .. j*K+K-1 belong to class j).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from losses.arcface import ArcFace

# read by losses/registry.py without running this file (ast.literal_eval): literals only
SPEC = {
    "name": "subcenter_arcface", "head": "SubCenterArcFace", "paper": "Deng et al., ECCV 2020",
    "formula": "s cos(theta_y + m), theta_y to the nearest of K sub-centres",
    "color": "tab:cyan", "grid": False,
    "params": {
        "scale": {"shared": "scale", "default": 64.0},
        "margin": {"meaning": "additive angular margin m: the target logit is cos(theta + m)", "unit": "radians",
                   "default": 0.5, "low": 0.0, "high": 3.141592653589793, "high_open": True},
        "subcenters": {"meaning": "sub-centres K per class (noisy labels fall to a minor one)", "unit": "count",
                       "default": 3, "low": 1, "high": 64, "integer": True}},
}
DEFAULT = {f: p["default"] for f, p in SPEC["params"].items()}  # each default written once: in SPEC


class SubCenterArcFace(ArcFace):
    def __init__(self, in_features: int, n_class: int, scale: float = DEFAULT["scale"],
                 margin: float = DEFAULT["margin"], subcenters: int = DEFAULT["subcenters"]) -> None:
        super().__init__(in_features, n_class, scale, margin)
        self.k = int(subcenters)
        self.weight = nn.Parameter(torch.empty(n_class * self.k, in_features))
        nn.init.xavier_uniform_(self.weight)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))
        return cos.view(len(embeddings), self.n_class, self.k).amax(dim=2)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", subcenters={self.k}"
