"""The toy network of the papers' feature figures: a small CNN in the spirit of LeNet++.

LeNet++ is the network of the centre-loss paper's 2-D MNIST toy (Wen et al., ECCV 2016), the one the
SphereFace, CosFace and ArcFace papers' pictures of features on the circle follow: three stages of two
5x5 convolutions with PReLU and a 2x2 max-pool (32, 64, 128 channels), then a linear layer to the 2-D
feature. Here the convolutions are 3x3 with BatchNorm (the toy has to converge in minutes on two CPU
cores, not hours) and `width` sets the first stage's channels (the others double): 8 by default, the
figures' choice, ~2.2x faster than 16 on a 2-core CPU (results/bench/toy_recipe.json). The last layer
has no activation after it: a ReLU would confine the features to one quadrant.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout),
                         nn.MaxPool2d(2))


class ToyNet(nn.Module):
    """Images [B, C, 28, 28] -> features [B, embedding_dim] (2 or 3 for the figures; any size works)."""

    def __init__(self, embedding_dim: int = 2, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(_stage(in_channels, width), _stage(width, 2 * width),
                                      _stage(2 * width, 4 * width), nn.AdaptiveAvgPool2d(3), nn.Flatten())
        self.fc = nn.Linear(4 * width * 9, embedding_dim)  # no activation: features may take any sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
