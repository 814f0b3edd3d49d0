"""`build_model(spec)`: the one way an ArchSpec becomes an nn.Module."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import blocks  # noqa: F401  (fills the registries)
from .blocks.common import CoreArgs
from .blocks.common_decoder import DecoderArgs
from .blocks.tvconv import TVResidual
from .registry import CORES, DECODERS, DOWNSAMPLERS
from .spec import ArchSpec


class Stage(nn.Sequential):
    """Downsampler to the stage width, then the core blocks (and a TVConv block if asked)."""

    def __init__(self, spec: ArchSpec, index: int, cin: int):
        st = spec.stages[index]
        tv_size = spec.stage_size(index) if spec.uses_tvconv(index) else None
        core = CORES[st.core]
        layers: list[nn.Module] = [DOWNSAMPLERS[spec.downsampler](cin, st.width)]
        c = st.width
        for i in range(st.depth):
            d = st.dilations[i % len(st.dilations)]
            block = core(CoreArgs(c, st.kernel, d, st.dropout, st.growth, tv_size))
            layers.append(block)
            c = block.out_channels
        # Cores without a depthwise conv to swap get TVConv as an extra residual block instead.
        if tv_size is not None and not getattr(core, "has_depthwise", False):
            layers.append(TVResidual(c, st.kernel, tv_size, st.dropout))
        super().__init__(*layers)
        self.out_channels = c


class SegmentationNet(nn.Module):
    """Holistic decomposition -> three encoder stages -> decoder -> sub-pixel recomposition."""

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        cin = spec.input.in_channels * spec.ratio**2
        stages = []
        for i in range(len(spec.stages)):
            stages.append(Stage(spec, i, cin))
            cin = stages[-1].out_channels
        self.stages = nn.ModuleList(stages)
        self.decoder = DECODERS[spec.decoder.kind](DecoderArgs(
            spec=spec.decoder, stages=spec.stages, channels=tuple(s.out_channels for s in stages),
            out_channels=spec.input.num_classes * spec.ratio**2, num_classes=spec.input.num_classes,
            ratio=spec.ratio,
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        r = self.spec.ratio
        if r > 1:
            x = F.pixel_unshuffle(x, r)  # lossless: r x smaller image, r^2 x the channels
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        y = self.decoder(feats)
        return F.pixel_shuffle(y, r) if r > 1 else y

    def _check_input(self, x: torch.Tensor) -> None:
        inp = self.spec.input
        if x.dim() != 4 or x.shape[1] != inp.in_channels:
            raise ValueError(f"input of shape {tuple(x.shape)}; expected (N, {inp.in_channels}, H, W)")
        step = 8 * self.spec.ratio
        if x.shape[2] % step or x.shape[3] % step:
            raise ValueError(f"input size {tuple(x.shape[2:])} must be a multiple of {step} (ratio {self.spec.ratio})")


def build_model(spec: ArchSpec) -> SegmentationNet:
    """Build the network that `spec` describes; output is (N, classes, H, W) at full resolution."""
    if not isinstance(spec, ArchSpec):
        raise TypeError(f"build_model takes an ArchSpec, got {type(spec).__name__}")
    return SegmentationNet(spec)
