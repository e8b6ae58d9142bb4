"""Classification heads, one file per loss; `build_head(name, ...)` picks one by name."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from losses.arcface import ArcFace
from losses.base import CosineMarginHead
from losses.softmax import Softmax

HEADS = {"softmax": Softmax, "arcface": ArcFace}


def build_head(loss_fuc_type: str, in_features: int, n_class: int, **kwargs: Any) -> nn.Module:
    """Build the head named `loss_fuc_type`; kwargs it does not take (scale, margin) are dropped."""
    if loss_fuc_type not in HEADS:
        raise ValueError(f"unknown loss '{loss_fuc_type}'; available: {', '.join(HEADS)}")
    cls = HEADS[loss_fuc_type]
    if cls is Softmax:
        return Softmax(in_features, n_class)
    accepted = {k: v for k, v in kwargs.items() if k in ("scale", "margin")}
    return cls(in_features, n_class, **accepted)


__all__ = ["ArcFace", "CosineMarginHead", "Softmax", "build_head", "HEADS"]
