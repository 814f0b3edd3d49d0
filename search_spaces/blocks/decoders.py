"""The two classic decoders of the lightweight encoder-decoder networks.

- `bilinear`: EDANet's (Lo et al., 2019): a 1x1 classifier at the lowest resolution (optionally
  after one 3x3 conv of `width` channels), then bilinear upsampling x8.
- `erfnet`: ERFNet's/ESNet's (Romera et al., 2018; Wang et al., 2019): transposed-conv 3x3 s2
  upsamplers, each followed by `blocks` nb1d cores, then a 2x2 transposed conv to the classes.
  Its widths and kernels mirror encoder stages 2 and 1, as in both papers (128 -> 64 -> 16).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_decoder
from .common import CoreArgs, bn, conv_bn_relu
from .common_decoder import DecoderArgs
from .factorized import NonBottleneck1D

UPSAMPLE = 8  # three stride-2 stages


@register_decoder("bilinear")
class BilinearDecoder(nn.Module):
    def __init__(self, a: DecoderArgs):
        super().__init__()
        c, width = a.channels[-1], a.spec.width
        self.hidden = conv_bn_relu(c, width, 3) if width else nn.Identity()
        self.classifier = nn.Conv2d(width or c, a.out_channels, 1, bias=True)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        y = self.classifier(self.hidden(feats[-1]))
        return F.interpolate(y, scale_factor=UPSAMPLE, mode="bilinear", align_corners=False)


class _Upsampler(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1, bias=True),
            bn(cout), nn.ReLU(inplace=True),
        )


@register_decoder("erfnet")
class ERFNetDecoder(nn.Module):
    def __init__(self, a: DecoderArgs):
        super().__init__()
        layers: list[nn.Module] = []
        cin = a.channels[-1]
        for stage in (a.stages[1], a.stages[0]):
            layers.append(_Upsampler(cin, stage.width))
            layers += [NonBottleneck1D(CoreArgs(stage.width, stage.kernel, 1, 0.0)) for _ in range(a.spec.blocks)]
            cin = stage.width
        layers.append(nn.ConvTranspose2d(cin, a.out_channels, 2, stride=2, bias=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.layers(feats[-1])
