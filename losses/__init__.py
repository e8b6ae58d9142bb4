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

import importlib
from typing import TYPE_CHECKING, Any

from losses import registry

if TYPE_CHECKING:
    import torch.nn as nn

_CLASSES = {"CosineMarginHead": "base", **{s["head"]: n for n, s in registry.specs().items()}}


def __getattr__(name: str) -> Any:
    """`from losses import ArcFace` imports its file (and torch) only when asked: the registry is torch-free."""
    if name in _CLASSES:
        return getattr(importlib.import_module(f"losses.{_CLASSES[name]}"), name)
    raise AttributeError(f"module 'losses' has no attribute {name!r}")


def paper_defaults(loss_fuc_type: str) -> dict[str, Any]:
    """The paper's values of a head's hyper-parameters (its SPEC)."""
    return registry.paper_defaults(loss_fuc_type)


def build_head(loss_fuc_type: str, in_features: int, n_class: int, **values: Any) -> nn.Module:
    """Build the head named `loss_fuc_type` from the hyper-parameters its SPEC lists (taken from `values`,
    the SPEC's default where absent or None); ValueError naming the range when one is out of it."""
    if loss_fuc_type not in registry.specs():
        raise ValueError(f"unknown loss '{loss_fuc_type}'; available: {', '.join(registry.names())}")
    mine = {**registry.paper_defaults(loss_fuc_type),
            **{k: v for k, v in values.items() if k in registry.spec(loss_fuc_type)["params"] and v is not None}}
    bad = registry.problems(loss_fuc_type, mine)
    if bad:
        raise ValueError(bad[0])
    return registry.head_class(loss_fuc_type)(in_features, n_class, **mine)


__all__ = ["build_head", "paper_defaults", "registry", *_CLASSES]
