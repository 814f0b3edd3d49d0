"""TVConv: translation-variant convolution.

Chen et al., "TVConv: Efficient Translation Variant Convolution for Layout-aware Visual
Processing", CVPR 2022. Learnable affinity maps (ca x H x W) feed a small weight-generating CNN
that emits one depthwise kernel per pixel. The kernels depend on position, not on the image, so in
eval mode they are generated once and cached; inference then costs only the per-pixel
multiply-adds, like a depthwise conv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import bn, dropout

AFFINITY_CHANNELS = 4
HIDDEN_CHANNELS = 32
HIDDEN_LAYERS = 2


def apply_pixel_kernels(x: torch.Tensor, kernels: torch.Tensor, kernel: int, dilation: int = 1) -> torch.Tensor:
    """Depthwise conv with a different kxk kernel at every pixel ("same" padding, stride 1).

    Args:
        x: (N, C, H, W) input.
        kernels: (C, k*k, H, W) kernel of each channel at each pixel, taps in row-major order.
    """
    n, c, h, w = x.shape
    pad = dilation * (kernel - 1) // 2
    cols = F.unfold(x, kernel, dilation=dilation, padding=pad).view(n, c, kernel * kernel, h, w)
    if torch.onnx.is_in_onnx_export():  # ONNX Runtime's Einsum is slow here; Mul + ReduceSum is the same sum
        return (cols * kernels).sum(2)
    # One multiply-add per tap per pixel; as an einsum the FLOP counter sees exactly that.
    return torch.einsum("nckhw,ckhw->nchw", cols, kernels)


class TVConv(nn.Module):
    """Drop-in replacement of a depthwise kxk conv for inputs of one fixed size `size`."""

    def __init__(self, channels: int, kernel: int, size: tuple[int, int], dilation: int = 1):
        super().__init__()
        self.channels, self.kernel, self.dilation, self.size = channels, kernel, dilation, tuple(size)
        h, w = self.size
        # Ones-initialised affinity maps: with replicate padding and GroupNorm(1, .) (a LayerNorm
        # over C, H, W with per-channel affine) a constant map stays constant through the generator,
        # so a fresh TVConv is exactly a plain depthwise conv; training then lets it vary over space.
        self.affinity = nn.Parameter(torch.ones(1, AFFINITY_CHANNELS, h, w))
        layers: list[nn.Module] = []
        cin = AFFINITY_CHANNELS
        for _ in range(HIDDEN_LAYERS):
            layers += [
                nn.Conv2d(cin, HIDDEN_CHANNELS, 3, padding=1, padding_mode="replicate", bias=False),
                nn.GroupNorm(1, HIDDEN_CHANNELS),
                nn.ReLU(inplace=True),
            ]
            cin = HIDDEN_CHANNELS
        layers.append(nn.Conv2d(cin, channels * kernel * kernel, 3, padding=1, padding_mode="replicate", bias=False))
        self.generator = nn.Sequential(*layers)
        self._cache: torch.Tensor | None = None
        self._cache_key: tuple | None = None

    def generate_kernels(self) -> torch.Tensor:
        """(C, k*k, H, W) per-pixel kernels from the current weights."""
        k2 = self.kernel * self.kernel
        return self.generator(self.affinity).view(self.channels, k2, *self.size)

    def _weights_key(self) -> tuple:
        # In-place updates (optimizer steps, load_state_dict) bump a tensor's version counter, so the
        # cache can never outlive the weights it was made from.
        return tuple((p.data_ptr(), p._version) for p in self.parameters())

    def cached_kernels(self) -> torch.Tensor:
        """Eval-mode kernels, generated once per set of weights."""
        key = self._weights_key()
        if self._cache is None or self._cache_key != key:
            with torch.inference_mode(False), torch.no_grad():
                self._cache = self.generate_kernels().detach().clone()
            self._cache_key = key
        return self._cache

    def train(self, mode: bool = True) -> TVConv:
        # Only training drops the cache: exporters call train(False) before tracing, and a cache
        # dropped there would trace the generator into the deployed graph.
        if mode:
            self._cache, self._cache_key = None, None
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(
                f"TVConv built for feature size {self.size} got {tuple(x.shape[-2:])}; "
                "TVConv needs the spec's fixed input size (rebuild the spec for this size)"
            )
        kernels = self.generate_kernels() if self.training else self.cached_kernels()
        return apply_pixel_kernels(x, kernels, self.kernel, self.dilation)


def depthwise(channels: int, kernel: int, dilation: int = 1, stride: int = 1,
              tv_size: tuple[int, int] | None = None) -> nn.Module:
    """A depthwise kxk conv, or a TVConv in its place when `tv_size` is given."""
    if tv_size is not None and stride == 1:
        return TVConv(channels, kernel, tv_size, dilation)
    pad = dilation * (kernel - 1) // 2
    return nn.Conv2d(channels, channels, kernel, stride, pad, dilation=dilation, groups=channels, bias=False)


class TVResidual(nn.Module):
    """TVConv residual block appended to stages whose cores have no depthwise conv to replace."""

    def __init__(self, channels: int, kernel: int, size: tuple[int, int], drop: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            TVConv(channels, kernel, size), bn(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False), dropout(drop),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)
