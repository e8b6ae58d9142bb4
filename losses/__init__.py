"""Classification heads, one file per loss; `build_head(name, ...)` picks one by name.

| name | paper | target logit psi(theta_y) | defaults |
|---|---|---|---|
| softmax | - | W_y x + b_y (plain linear) | - |
| normface | Wang et al. 2017 | cos theta | s 30 |
| sphereface | Liu et al. 2017 | (lambda cos theta + (-1)^k cos(m theta) - 2k) / (1 + lambda) | s 30, m 4 |
| cosface | Wang et al. 2018 | cos theta - m | s 64, m 0.35 |
| arcface | Deng et al. 2019 | cos(theta + m) | s 64, m 0.5 |
| combined | Deng et al. 2019 | cos(m1 theta + m2) - m3 | s 64, (1, 0.3, 0.2) |
| subcenter_arcface | Deng et al. 2020 | ArcFace on max over K sub-centres | s 64, m 0.5, K 3 |
"""

from __future__ import annotations

import inspect
from typing import Any

import torch.nn as nn

from losses.arcface import ArcFace
from losses.base import CosineMarginHead
from losses.combined import CombinedMargin
from losses.cosface import CosFace
from losses.normface import NormFace
from losses.softmax import Softmax
from losses.sphereface import SphereFace
from losses.subcenter_arcface import SubCenterArcFace

HEADS: dict[str, type[nn.Module]] = {
    "softmax": Softmax, "normface": NormFace, "sphereface": SphereFace, "cosface": CosFace,
    "arcface": ArcFace, "combined": CombinedMargin, "subcenter_arcface": SubCenterArcFace,
}


def paper_defaults(loss_fuc_type: str) -> dict[str, Any]:
    """The constructor defaults of a head (its paper's s, m, ...)."""
    sig = inspect.signature(HEADS[loss_fuc_type].__init__)
    return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def build_head(loss_fuc_type: str, in_features: int, n_class: int, **kwargs: Any) -> nn.Module:
    """Build the head named `loss_fuc_type`; keyword arguments it does not take are dropped, so one
    params object (scale, margin, m1, m2, m3, subcenters) can build any head."""
    if loss_fuc_type not in HEADS:
        raise ValueError(f"unknown loss '{loss_fuc_type}'; available: {', '.join(HEADS)}")
    accepted = paper_defaults(loss_fuc_type)
    return HEADS[loss_fuc_type](in_features, n_class, **{k: v for k, v in kwargs.items() if k in accepted})


__all__ = ["ArcFace", "CombinedMargin", "CosFace", "CosineMarginHead", "NormFace", "Softmax", "SphereFace",
           "SubCenterArcFace", "build_head", "paper_defaults", "HEADS"]
