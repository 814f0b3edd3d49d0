"""What every decoder's constructor receives."""
from __future__ import annotations

from dataclasses import dataclass

from ..spec import DecoderSpec, StageSpec


@dataclass(frozen=True)
class DecoderArgs:
    """Decoders see the three stage outputs (strides 2, 4, 8 of the decomposed input) and emit
    `out_channels` = classes * ratio^2 maps at the decomposed input's full resolution."""

    spec: DecoderSpec
    stages: tuple[StageSpec, ...]
    channels: tuple[int, ...]  # output channels of each stage
    out_channels: int
    num_classes: int
    ratio: int
