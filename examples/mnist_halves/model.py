"""The seed's models. `HalfConvNet` reads a 28x14 half image; `dropout=False` gives the
deterministic variant the equivalence tests use."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 20


class HalfConvNet(nn.Module):
    def __init__(self, dropout: bool = True) -> None:
        super().__init__()
        self.dropout = dropout
        self.conv1 = nn.Conv2d(in_channels=1, out_channels=10, kernel_size=(5, 3))
        self.conv2 = nn.Conv2d(in_channels=10, out_channels=20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d() if dropout else nn.Identity()
        self.fc1 = nn.Linear(in_features=80, out_features=50)
        self.fc2 = nn.Linear(in_features=50, out_features=FEATURE_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 1x28x14 -> conv(5,3) 10x24x12 -> pool 10x12x6 -> conv5 20x8x2 -> pool 20x4x1 = 80
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 80)
        x = F.relu(self.fc1(x))
        if self.dropout:
            x = F.dropout(x, training=self.training)
        return self.fc2(x)


class InferModule(nn.Module):
    """Fuses the two 20-wide feature vectors (40 columns) into 10 class log-probabilities."""

    def __init__(self, in_features: int = 2 * FEATURE_DIM) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 20)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.fc1(x))
        return F.log_softmax(self.fc2(out), dim=-1)
