"""Toy datasets and a tiny model that tests on several floors share (none of them is a test).

``Shapes``: discs vs squares drawn on random backgrounds, enough for a pretrained backbone to learn something.
``Toy``: dark vs light noisy squares. ``tiny()``: a two-block convolutional classifier with BatchNorm and
dropout before the head, as EfficientNet-Lite0 has, that trains in well under a second.
"""

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from core.models.backbones import LayerGroup
from core.models.heads import Classifier


class Shapes:
    """A tiny in-memory dataset: discs vs squares, enough for a model to learn something."""

    def __init__(self, n: int, seed: int, size: int = 48):
        rng = np.random.default_rng(seed)
        self.classes = ["disc", "square"]
        self.items = []
        for i in range(n):
            label = i % 2
            img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(180, 255, 3)))
            draw = ImageDraw.Draw(img)
            x, y = (int(v) for v in rng.integers(2, size // 2, 2))
            s = int(rng.integers(size // 4, size // 2))
            colour = tuple(int(c) for c in rng.integers(0, 120, 3))
            (draw.ellipse if label == 0 else draw.rectangle)([x, y, x + s, y + s], fill=colour)
            self.items.append((img, label))
        self.labels = [label for _, label in self.items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class TinyNet(nn.Module):
    def __init__(self, classes: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Sequential(nn.BatchNorm2d(8)), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(self.drop(self.pool(self.block(self.stem(x))).flatten(1)))


def tiny(seed: int = 0, classes=("dark", "light")) -> Classifier:
    torch.manual_seed(seed)
    groups = [LayerGroup("stem", ["stem"]), LayerGroup("block", ["block"]), LayerGroup("head", ["fc"])]
    return Classifier(TinyNet(len(classes)), backbone_name="tiny", layer_groups=groups, head_module="fc",
                      classes=list(classes), mean=(0.5,) * 3, std=(0.25,) * 3, image_size=32, pretrained=False,
                      pre_head=("drop",)).eval()


class Toy:
    """Dark vs light noisy squares."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.classes = ["dark", "light"]
        self.labels = [i % 2 for i in range(n)]
        self.images = [Image.fromarray(np.clip(rng.normal(70 + 110 * y, 40, (32, 32, 3)), 0, 255).astype(np.uint8))
                       for y in self.labels]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]
