"""The classifier network, shared by training and serving.

A ResNet whose parameter names and shapes are exactly torchvision's
(`conv1`, `bn1`, `layer1..4`, `fc`), so torchvision's ImageNet weight files load
into it unchanged and our state dicts load into `torchvision.models.resnet50()`
with the same head. It lives here, and not in torchvision, so the serving image
needs only torch: the CPU serving variant can then use a CPU-only torch build
for which no matching torchvision exists. tests/unit/test_contract.py checks that it
is torchvision's network, key for key and output for output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from contract.spec.architecture import BACKBONES, STAGES  # noqa: F401  (STAGES: the trainer's freezing)


@dataclass
class Architecture:
    backbone: str = "resnet50"
    num_classes: int = 2
    head: list = field(default_factory=list)  # hidden sizes of the new FC head
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, backbone: str):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        kind, layers, groups, width = BACKBONES[backbone]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.inplanes, self._groups, self._width = 64, groups, width
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._stage(block, 64, layers[0], 1)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 256, layers[2], 2)
        self.layer4 = self._stage(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 512 * block.expansion
        self.fc: nn.Module = nn.Linear(self.num_features, 1000)
        # torchvision's initialisation, so a from-scratch backbone trains alike.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self._groups, self._width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, self._groups, self._width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features, shape (N, num_features)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def stage_modules(self, stage: str) -> list[nn.Module]:
        return [self.conv1, self.bn1] if stage == "stem" else [getattr(self, stage)]


def make_head(in_features: int, hidden: list, num_classes: int, dropout: float) -> nn.Sequential:
    """Linear layers with ReLU (and dropout) between them; keys fc.0, fc.2, ..."""
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.ReLU(inplace=True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(size)
    if dropout > 0 and not hidden:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def build_classifier(arch: Architecture) -> ResNet:
    """A backbone with its ImageNet `fc` replaced by the new head."""
    model = ResNet(arch.backbone)
    model.fc = make_head(model.num_features, list(arch.head), arch.num_classes, arch.dropout)
    return model
