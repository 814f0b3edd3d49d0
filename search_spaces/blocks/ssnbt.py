"""LEDNet's split-shuffle-non-bottleneck (SS-nbt) unit.

Wang et al., "LEDNet: A Lightweight Encoder-Decoder Network for Real-Time Semantic
Segmentation", ICIP 2019. Channels are split in two; each half runs a factorised residual stack
(the halves in opposite kx1/1xk order); concat, +x, ReLU, then a channel shuffle mixes the halves.
As in the official code (xiaoyufenfei/LEDNet, SS_nbt_module), each half ends in its second BN with
no ReLU: the only nonlinearity after it is the one on the residual sum.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_core
from .common import CoreArgs, bn, channel_shuffle, conv_1xk, conv_kx1, dropout


class _Half(nn.Module):
    def __init__(self, c: int, k: int, d: int, p: float, vertical_first: bool):
        super().__init__()
        first, second = (conv_kx1, conv_1xk) if vertical_first else (conv_1xk, conv_kx1)
        self.a1, self.b1, self.bn1 = first(c, c, k), second(c, c, k), bn(c)
        self.a2, self.b2, self.bn2 = first(c, c, k, d), second(c, c, k, d), bn(c)
        self.drop = dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.b1(F.relu(self.a1(x)))))
        y = self.bn2(self.b2(F.relu(self.a2(y))))  # no ReLU here: relu(x + y) follows the concat
        return self.drop(y)


@register_core("ssnbt")
class SplitShuffleNonBottleneck(nn.Module):
    def __init__(self, a: CoreArgs):
        super().__init__()
        half = a.channels // 2
        self.out_channels = a.channels
        self.left = _Half(half, a.kernel, a.dilation, a.dropout, vertical_first=True)
        self.right = _Half(half, a.kernel, a.dilation, a.dropout, vertical_first=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        y = torch.cat([self.left(x1), self.right(x2)], dim=1)
        return channel_shuffle(F.relu(x + y), 2)
