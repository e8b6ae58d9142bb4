"""ResNet18 embedder: a ResNet18 trunk -> Linear -> BatchNorm1d = the embedding.

The trunk is torchvision's ResNet18 (He et al., 2016) written out here: the same layers, parameter
names and initialisation, in the same order, so it builds bit-identical weights from the same seed
and loads torchvision's ImageNet weights unchanged (tests/test_models.py checks both against
torchvision itself). Writing it out keeps torchvision, whose import takes 1.7 s on the project's
CPU, off the path of every run and of `verify`; it is imported only to fetch pretrained weights.

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

from utils.core.errors import PretrainedUnavailable


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (a 1x1 projection when the shape changes)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        # attribute order = torchvision's: it fixes the order of initialisation and of state_dict keys
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """ResNet18 for 3-channel input with a 1000-class `fc`, initialised as torchvision does."""

    def __init__(self) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(64, 1)
        self.layer2 = self._layer(128, 2)
        self.layer3 = self._layer(256, 2)
        self.layer4 = self._layer(512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, 1000)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _layer(self, planes: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes:  # created before the block, as in torchvision
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        blocks = [BasicBlock(self.inplanes, planes, stride, down), BasicBlock(planes, planes)]
        self.inplanes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _resnet18_trunk(pretrained: bool) -> ResNet18:
    net = ResNet18()
    if not pretrained:
        return net
    try:
        import torchvision  # only for the weights' address and their download

        state = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    except Exception as e:  # URLError, socket errors, SSL, hash mismatch...
        raise PretrainedUnavailable(
            f"pretrained=True needs the ImageNet ResNet18 weights, which could not be downloaded "
            f"({type(e).__name__}). Run once with network access (they are cached under "
            f"{torch.hub.get_dir()}), or use --pretrained=false.") from None
    net.load_state_dict(state)
    return net


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


def input_channels(pretrained: bool) -> int:
    """ImageNet weights expect RGB: grey images are then replicated to 3 channels."""
    return 3 if pretrained else 1
