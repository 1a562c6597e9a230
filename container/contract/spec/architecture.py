"""The networks the trainer can build, as data: the names hyperparameters accept, no torch.

contract/model.py builds them; the hyperparameter definitions check names against them.
"""

from __future__ import annotations

# name -> (block, blocks per stage, groups, width per group)
BACKBONES = {
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64),
    "resnet34": ("basic", (3, 4, 6, 3), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1, 64),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), 32, 4),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 1, 128),
}

# Freezable stages from the top of the network down: trainable-layers=N
# unfreezes the first N of these (plus the head, which is always trained).
STAGES = ("layer4", "layer3", "layer2", "layer1", "stem")
