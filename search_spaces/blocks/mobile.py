"""Depthwise-separable cores from the mobile classification networks.

- `shufflev2`: Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture
  Design", ECCV 2018 (stride-1 unit: split, 1x1 -> depthwise kxk -> 1x1 on one half, concat, shuffle).
- `mbconv`: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018
  (expand t=4 here, depthwise kxk dilated, linear 1x1 projection, +x).
Their depthwise convs become TVConvs in stages at or after the spec's `tvconv_from`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import register_core
from .common import CoreArgs, bn, channel_shuffle, conv_bn_relu, dropout
from .tvconv import depthwise

MBCONV_EXPANSION = 4


@register_core("shufflev2")
class ShuffleV2Unit(nn.Module):
    has_depthwise = True  # its depthwise conv becomes a TVConv where the spec asks

    def __init__(self, a: CoreArgs):
        super().__init__()
        half = a.channels // 2
        self.out_channels = a.channels
        self.branch = nn.Sequential(
            conv_bn_relu(half, half, 1),
            depthwise(half, a.kernel, a.dilation, tv_size=a.tv_size), bn(half),
            conv_bn_relu(half, half, 1),
            dropout(a.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([x1, self.branch(x2)], dim=1), 2)


@register_core("mbconv")
class InvertedResidual(nn.Module):
    has_depthwise = True

    def __init__(self, a: CoreArgs):
        super().__init__()
        c, hidden = a.channels, a.channels * MBCONV_EXPANSION
        self.out_channels = c
        self.body = nn.Sequential(
            conv_bn_relu(c, hidden, 1),
            depthwise(hidden, a.kernel, a.dilation, tv_size=a.tv_size), bn(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, c, 1, bias=False), bn(c),  # linear bottleneck: no activation
            dropout(a.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
