"""Every block family; importing this package fills the registries."""
from . import apn, decoders, downsample, dupsample, eda, factorized, inception, mobile, ssnbt  # noqa: F401
from .common import CoreArgs, channel_shuffle
from .common_decoder import DecoderArgs
from .dupsample import fit_reconstruction, label_patches
from .tvconv import TVConv, TVResidual, apply_pixel_kernels

__all__ = [
    "CoreArgs", "DecoderArgs", "TVConv", "TVResidual", "apply_pixel_kernels", "channel_shuffle",
    "fit_reconstruction", "label_patches",
]
