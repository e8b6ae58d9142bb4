"""The backbones by name: get_model("resnet18" | "toy", ...) -> images [B, C, H, W] -> embeddings [B, D]."""

import torch.nn as nn

from models.resnet import Embedder, input_channels
from models.toy import ToyNet
from utils.core.config import BACKBONES
from utils.core.errors import PretrainedUnavailable


def get_model(name: str, embedding_dim: int = 512, stem: str = "s2", pretrained: bool = False,
              in_channels: int | None = None) -> nn.Module:
    """Factory by backbone name; grey input is replicated to 3 channels only for pretrained weights.
    in_channels rebuilds a trained network without fetching weights (its checkpoint holds them).
    The toy network (the papers' feature figures) has no stem choice and no pretrained weights."""
    channels = in_channels or input_channels(pretrained)
    if name == "resnet18":
        return Embedder(embedding_dim, stem, in_channels=channels, pretrained=pretrained)
    if name == "toy":
        return ToyNet(embedding_dim, in_channels=channels)
    raise ValueError(f"unknown backbone '{name}'; available: {', '.join(BACKBONES)}")


__all__ = ["BACKBONES", "Embedder", "PretrainedUnavailable", "ToyNet", "get_model", "input_channels"]
