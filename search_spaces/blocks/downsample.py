"""Stride-2 downsamplers, used as the stem and between stages.

- `erfnet`: ENet/ERFNet initial block: concat(conv3x3 s2 -> (out - in) channels, maxpool 2x2), BN,
  ReLU (Paszke et al., ENet, 2016; Romera et al., ERFNet, 2018). When out <= in there is nothing
  to concatenate to, so it is the conv alone, as in EDANet's downsampler.
- `strided`: conv3x3 s2, BN, ReLU.
- `dwsep`: depthwise 3x3 s2, BN, pointwise 1x1, BN, ReLU (MobileNet).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_downsampler
from .common import bn, conv_bn_relu


@register_downsampler("erfnet")
class ERFNetDownsampler(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.pool = cout > cin
        self.conv = nn.Conv2d(cin, cout - cin if self.pool else cout, 3, stride=2, padding=1, bias=True)
        self.bn = bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.pool:
            y = torch.cat([y, F.max_pool2d(x, 2, 2)], dim=1)
        return F.relu(self.bn(y))


@register_downsampler("strided")
class StridedDownsampler(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(*conv_bn_relu(cin, cout, 3, stride=2))


@register_downsampler("dwsep")
class DepthwiseSeparableDownsampler(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False), bn(cin),
            *conv_bn_relu(cin, cout, 1),
        )
