"""Asymmetric (factorised) residual cores.

- `nb1d`: non-bottleneck-1D of ERFNet (Romera et al., "ERFNet: Efficient Residual Factorized
  ConvNet for Real-time Semantic Segmentation", T-ITS 2018). With kernel 5 it is ESNet's FCU.
- `pfcu`: parallel factorised convolution unit of ESNet (Wang et al., "ESNet: An Efficient
  Symmetric Network for Real-time Semantic Segmentation", PRCV 2019).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_core
from .common import CoreArgs, bn, conv_1xk, conv_kx1, dropout


@register_core("nb1d")
class NonBottleneck1D(nn.Module):
    """kx1, ReLU, 1xk, BN, ReLU, kx1 (dilated), ReLU, 1xk (dilated), BN, dropout, +x, ReLU."""

    def __init__(self, a: CoreArgs):
        super().__init__()
        c, k, d = a.channels, a.kernel, a.dilation
        self.out_channels = c
        self.conv1_v, self.conv1_h, self.bn1 = conv_kx1(c, c, k), conv_1xk(c, c, k), bn(c)
        self.conv2_v, self.conv2_h, self.bn2 = conv_kx1(c, c, k, d), conv_1xk(c, c, k, d), bn(c)
        self.drop = dropout(a.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1_h(F.relu(self.conv1_v(x)))))
        y = self.bn2(self.conv2_h(F.relu(self.conv2_v(y))))
        return F.relu(x + self.drop(y))


def pfcu_dilations(d: int) -> tuple[int, int, int]:
    """Dilations of PFCU's three branches for block dilation d: ESNet's (2, 5, 9) at d = 2."""
    return d, 2 * d + 1, 4 * d + 1


@register_core("pfcu")
class ParallelFactorizedUnit(nn.Module):
    """A kx1/1xk pair, then three parallel dilated kx1/1xk branches summed, +x, ReLU.

    The branches share one BatchNorm (`bn2`), as in the official ESNet code (xiaoyufenfei/ESNet, PFCU):
    each branch is normalised separately by the same affine parameters, then dropped out on its own.
    """

    def __init__(self, a: CoreArgs):
        super().__init__()
        c, k = a.channels, a.kernel
        self.out_channels = c
        self.conv_v, self.conv_h, self.bn1 = conv_kx1(c, c, k), conv_1xk(c, c, k), bn(c)
        dilations = pfcu_dilations(a.dilation)
        self.branch_v = nn.ModuleList(conv_kx1(c, c, k, d) for d in dilations)
        self.branch_h = nn.ModuleList(conv_1xk(c, c, k, d) for d in dilations)
        self.bn2 = bn(c)
        self.drops = nn.ModuleList(dropout(a.dropout) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv_h(F.relu(self.conv_v(x)))))
        out = x
        for conv_v, conv_h, drop in zip(self.branch_v, self.branch_h, self.drops):
            out = out + drop(self.bn2(conv_h(F.relu(conv_v(y)))))
        return F.relu(out)
