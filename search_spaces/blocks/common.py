"""Small pieces shared by the block families."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# ERFNet/ESNet/LEDNet all use BatchNorm eps 1e-3; keeping it makes the presets faithful.
BN_EPS = 1e-3


@dataclass(frozen=True)
class CoreArgs:
    """Everything a core block's constructor needs, derived from a StageSpec by the builder."""

    channels: int  # input channels of this block
    kernel: int
    dilation: int
    dropout: float
    growth: int = 0
    # Feature-map (H, W) when the block's depthwise convs are TVConvs; None for plain convs.
    tv_size: tuple[int, int] | None = None


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, stride: int = 1, dilation: int = 1, groups: int = 1,
                 bias: bool = False) -> nn.Sequential:
    # A bias before BN is redundant; `bias=True` only where a preset must match official code (LEDNet's APN).
    pad = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, groups=groups, bias=bias),
        bn(cout),
        nn.ReLU(inplace=True),
    )


def conv_kx1(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Conv2d:
    """Vertical half of an asymmetric (factorised) kxk conv."""
    return nn.Conv2d(cin, cout, (k, 1), padding=(dilation * (k - 1) // 2, 0), dilation=(dilation, 1), bias=True)


def conv_1xk(cin: int, cout: int, k: int, dilation: int = 1) -> nn.Conv2d:
    """Horizontal half of an asymmetric (factorised) kxk conv."""
    return nn.Conv2d(cin, cout, (1, k), padding=(0, dilation * (k - 1) // 2), dilation=(1, dilation), bias=True)


def dropout(p: float) -> nn.Module:
    return nn.Dropout2d(p) if p > 0 else nn.Identity()


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: a free view/transpose that mixes the groups' channels."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
