"""ResNet18 embedder: torchvision's ResNet18 trunk -> Linear -> BatchNorm1d = the embedding.

The ArcFace model and the softmax model share this network; only the head differs, and both are
evaluated on this embedding. Stems (the layers before `layer1`) trade cost for resolution:

| stem      | first layers                 | feature map into layer1 at 28 px | use                      |
|-----------|------------------------------|----------------------------------|--------------------------|
| imagenet  | 7x7 stride 2 + 3x3 maxpool   | 7 x 7                            | the original (at 128 px) |
| s2        | 3x3 stride 2, no maxpool     | 14 x 14                          | CPU default at 28 px     |
| cifar     | 3x3 stride 1, no maxpool     | 28 x 28                          | 4x the cost of s2        |
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision


class PretrainedUnavailable(RuntimeError):
    """ImageNet weights were asked for but could not be fetched."""


def _resnet18_trunk(pretrained: bool) -> nn.Module:
    if not pretrained:
        return torchvision.models.resnet18(weights=None)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    try:
        return torchvision.models.resnet18(weights=weights)
    except Exception as e:  # URLError, socket errors, SSL, hash mismatch...
        raise PretrainedUnavailable(
            f"pretrained=True needs the ImageNet ResNet18 weights, which could not be downloaded "
            f"({type(e).__name__}). Run once with network access (they are cached under "
            f"{torch.hub.get_dir()}), or use --pretrained=false.") from None


class Embedder(nn.Module):
    """Images [B, C, H, W] -> embeddings [B, embedding_dim] (not normalised; heads normalise)."""

    def __init__(self, embedding_dim: int = 512, stem: str = "s2", in_channels: int = 1,
                 pretrained: bool = False) -> None:
        super().__init__()
        net = _resnet18_trunk(pretrained)
        if stem == "imagenet":
            if in_channels != 3:
                net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        elif stem in ("s2", "cifar"):
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 2 if stem == "s2" else 1, 1, bias=False)
            net.maxpool = nn.Identity()
        else:
            raise ValueError(f"unknown stem '{stem}'")
        net.fc = nn.Identity()
        self.trunk = net
        self.fc = nn.Linear(512, embedding_dim)
        self.bn = nn.BatchNorm1d(embedding_dim)  # as in insightface: stabilises the embedding scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.trunk(x)))


def get_model(name: str, embedding_dim: int = 512, stem: str = "s2", pretrained: bool = False) -> Embedder:
    """Factory by backbone name; grey input is replicated to 3 channels only for pretrained weights."""
    if name != "resnet18":
        raise ValueError(f"unknown backbone '{name}'; available: resnet18")
    return Embedder(embedding_dim, stem, in_channels=input_channels(pretrained), pretrained=pretrained)


def input_channels(pretrained: bool) -> int:
    """ImageNet weights expect RGB: grey images are then replicated to 3 channels."""
    return 3 if pretrained else 1
