"""Inception-style multi-branch, multi-dilation residual core.

After the multi-branch modules of the lightweight-segmentation survey's encoders (e.g. ESPNet's and
DABNet's parallel dilated branches, Inception's factorised kxk): four branches on reduced channels
(1x1; factorised kxk; factorised kxk dilated d; factorised kxk dilated 2d), concatenated, fused
by a 1x1 conv, +x, ReLU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_core
from .common import CoreArgs, bn, conv_1xk, conv_kx1, conv_bn_relu, dropout

BRANCHES = 4


def _factorised(c: int, k: int, d: int) -> nn.Sequential:
    return nn.Sequential(conv_kx1(c, c, k, d), nn.ReLU(inplace=True), conv_1xk(c, c, k, d), bn(c), nn.ReLU(inplace=True))


@register_core("inception")
class InceptionCore(nn.Module):
    def __init__(self, a: CoreArgs):
        super().__init__()
        c, k, d = a.channels, a.kernel, a.dilation
        r = max(1, c // BRANCHES)
        self.out_channels = c
        self.reduce = conv_bn_relu(c, r, 1)
        self.branches = nn.ModuleList([nn.Identity(), _factorised(r, k, 1), _factorised(r, k, d), _factorised(r, k, 2 * d)])
        self.fuse = nn.Conv2d(BRANCHES * r, c, 1, bias=False)
        self.bn = bn(c)
        self.drop = dropout(a.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(x)
        y = torch.cat([b(y) for b in self.branches], dim=1)
        return F.relu(x + self.drop(self.bn(self.fuse(y))))
