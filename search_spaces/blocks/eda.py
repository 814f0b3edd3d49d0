"""EDANet's dense asymmetric module.

Lo et al., "Efficient Dense Modules of Asymmetric Convolution for Real-Time Semantic
Segmentation", ACM MM Asia 2019. Each block computes `growth` new channels and concatenates them
to its input, so a stage of depth n widens from w to w + n*growth.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_core
from .common import CoreArgs, bn, conv_1xk, conv_kx1, dropout


@register_core("eda")
class EDAModule(nn.Module):
    """1x1 to k, kx1, 1xk, BN, ReLU, dilated kx1, 1xk, BN, ReLU, dropout, concat to the input."""

    def __init__(self, a: CoreArgs):
        super().__init__()
        c, g, k, d = a.channels, a.growth, a.kernel, a.dilation
        self.out_channels = c + g
        self.reduce = nn.Conv2d(c, g, 1, bias=True)
        self.bn0 = bn(g)
        self.conv1_v, self.conv1_h, self.bn1 = conv_kx1(g, g, k), conv_1xk(g, g, k), bn(g)
        self.conv2_v, self.conv2_h, self.bn2 = conv_kx1(g, g, k, d), conv_1xk(g, g, k, d), bn(g)
        self.drop = dropout(a.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn0(self.reduce(x)))
        y = F.relu(self.bn1(self.conv1_h(self.conv1_v(y))))
        y = F.relu(self.bn2(self.conv2_h(self.conv2_v(y))))
        return torch.cat([self.drop(y), x], dim=1)
