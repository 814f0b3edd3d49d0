"""LEDNet's attention pyramid network decoder.

Wang et al., "LEDNet: A Lightweight Encoder-Decoder Network for Real-Time Semantic
Segmentation", ICIP 2019. A strided 7x7 / 5x5 / 3x3 pyramid builds a spatial attention map
(upsampled and summed level by level); it multiplies a 1x1 projection of the features to the
classes, a global-pooling branch adds context, and bilinear upsampling restores full size.
LEDNet's pyramid has 1 channel; with `width` > 1 a 1x1 conv maps it to per-class attention.
Its conv-BN-ReLUs keep the conv bias of the official code (xiaoyufenfei/LEDNet, Conv2dBnRelu) so the
LEDNet preset has the original's parameters exactly.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_decoder
from .common import conv_bn_relu
from .common_decoder import DecoderArgs
from .decoders import UPSAMPLE


def _resize(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@register_decoder("apn")
class AttentionPyramidDecoder(nn.Module):
    def __init__(self, a: DecoderArgs):
        super().__init__()
        c, p, out = a.channels[-1], a.spec.width, a.out_channels
        cbr = partial(conv_bn_relu, bias=True)
        self.pool_branch = cbr(c, out, 1)
        self.mid = cbr(c, out, 1)
        self.down1 = cbr(c, p, 7, stride=2)
        self.down2 = cbr(p, p, 5, stride=2)
        self.down3 = nn.Sequential(cbr(p, p, 3, stride=2), cbr(p, p, 3))
        self.conv2 = cbr(p, p, 5)
        self.conv1 = cbr(p, p, 7)
        self.to_classes = nn.Conv2d(p, out, 1, bias=False) if p > 1 else nn.Identity()

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        size = x.shape[-2:]
        x1 = self.down1(x)
        x2 = self.down2(x1)
        x3 = self.down3(x2)
        # Resize to the next level's actual size: tiny maps (ratio 4) make h // 4 round to zero.
        att = self.conv2(x2) + _resize(x3, x2.shape[-2:])
        att = self.conv1(x1) + _resize(att, x1.shape[-2:])
        att = self.to_classes(_resize(att, size))
        pooled = self.pool_branch(F.adaptive_avg_pool2d(x, 1))
        y = self.mid(x) * att + pooled  # the pooled branch broadcasts over H x W
        return F.interpolate(y, scale_factor=UPSAMPLE, mode="bilinear", align_corners=False)
