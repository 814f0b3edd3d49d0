"""DUpsampling decoder: data-dependent upsampling.

Tian et al., "Decoders Matter for Semantic Segmentation: Data-Dependent Decoding Enables Flexible
Feature Aggregation", CVPR 2019. Earlier stages' features are *downsampled* to the lowest
resolution and fused with the last stage into N channels; a fixed linear reconstruction matrix W,
fitted in closed form (PCA) on the training set's one-hot label patches, expands them to
(s x s x classes) patches and depth-to-space restores full resolution. A learnable temperature
sharpens the softmax (the paper's adaptive-temperature softmax): the logits are divided by T.
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_decoder
from .common_decoder import DecoderArgs
from .decoders import UPSAMPLE

MAX_PATCHES = 20_000  # PCA on a seeded sample; enough for a stable top-N basis
# Cap on patches x patch dimension held as floats (256 MB in float32): at ratio 4 a patch has
# 32*32*classes dimensions, so fewer patches are kept there and memory never grows with D or data.
MAX_SAMPLE_VALUES = 2**26
EXACT_PCA_MAX_DIM = 2048  # above this patch dimension, use a randomized low-rank SVD


def _pixel_patches(label: torch.Tensor, ratio: int) -> torch.Tensor:
    """(P, Q) class ids of one (H, W) label map's patches, Q = (8 ratio)^2 pixels in decoder order.

    The decoder's output goes through pixel_shuffle(8), then the model's pixel_shuffle(ratio); the
    inverse of that composition gives each patch's pixels in the order of its output channels.
    """
    x = F.pixel_unshuffle(F.pixel_unshuffle(label[None, None], ratio), UPSAMPLE)
    return x.flatten(2)[0].T


def _one_hot_patches(pixels: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(P, Q) class ids -> (P, classes * Q) one-hot vectors (class-major); ignored pixels all-zero."""
    valid = pixels != ignore_index
    onehot = torch.zeros(len(pixels), num_classes, pixels.shape[1])  # float32 from the start: no int64 copy
    onehot.scatter_(1, torch.where(valid, pixels, 0).long().unsqueeze(1), valid.float().unsqueeze(1))
    return onehot.flatten(1)


def label_patches(label: torch.Tensor, num_classes: int, ratio: int, ignore_index: int = 255) -> torch.Tensor:
    """(P, D) one-hot patch vectors of one (H, W) label map, in the decoder's output channel order."""
    return _one_hot_patches(_pixel_patches(label, ratio), num_classes, ignore_index)


def sample_patches(labels: Iterable[torch.Tensor], ratio: int, k: int, seed: int = 0) -> torch.Tensor:
    """A uniform, seeded sample of at most `k` pixel patches from a stream of label maps.

    Reservoir sampling (Algorithm R, one map at a time): memory is the k-patch reservoir plus one
    map's patches, whatever the number of maps; time is linear in it.
    """
    gen = torch.Generator().manual_seed(seed)
    reservoir: torch.Tensor | None = None
    seen = 0
    for label in labels:
        pix = _pixel_patches(torch.as_tensor(label), ratio)
        if reservoir is None:
            reservoir = torch.empty((k, pix.shape[1]), dtype=pix.dtype)
        m = len(pix)
        fill = min(max(k - seen, 0), m)
        reservoir[seen:seen + fill] = pix[:fill]
        if fill < m:  # patch number g (0-based) replaces a random slot with probability k / (g + 1)
            g = torch.arange(seen + fill, seen + m, dtype=torch.float64)
            slot = (torch.rand(len(g), generator=gen, dtype=torch.float64) * (g + 1)).long()
            src = torch.arange(fill, m)
            keep = slot < k
            slot, src = slot[keep].numpy(), src[keep].numpy()
            # several patches of one map may draw one slot: the last wins, as in the sequential rule
            last = len(slot) - 1 - np.unique(slot[::-1], return_index=True)[1]
            reservoir[torch.from_numpy(slot[last])] = pix[torch.from_numpy(src[last])]
        seen += m
    if reservoir is None or seen == 0:
        raise ValueError("fit_reconstruction needs at least one label map")
    return reservoir[:min(seen, k)]


@dataclass(frozen=True)
class PatchPCA:
    """The principal components of one-hot label patches, by decreasing variance."""

    mean: torch.Tensor  # (D,)
    components: torch.Tensor  # (D, q) float64; every component where it came from the exact decomposition

    def basis(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """DUpsampling's W for N = `n`: (basis (D, n), mean (D,)), spare codes zero where q < n."""
        basis = torch.zeros(len(self.mean), n, dtype=torch.float64)
        q = min(n, self.components.shape[1])
        basis[:, :q] = self.components[:, :q]
        return basis.float(), self.mean.float()


def exact_pca(num_classes: int, ratio: int) -> bool:
    """Whether a patch's dimension is small enough for the exact decomposition, whose components serve every N."""
    return num_classes * (UPSAMPLE * ratio) ** 2 <= EXACT_PCA_MAX_DIM


def patch_sample_size(num_classes: int, ratio: int) -> int:
    """How many patches the PCA samples at most (fewer where patches are long)."""
    return max(1, min(MAX_PATCHES, MAX_SAMPLE_VALUES // (num_classes * (UPSAMPLE * ratio) ** 2)))


def patch_pca(labels: Iterable[torch.Tensor], num_classes: int, ratio: int, n: int, ignore_index: int = 255,
              seed: int = 0) -> PatchPCA:
    """PCA of the label patches: all components where the exact decomposition applies (`exact_pca`),
    else the top `n` by a randomized low-rank SVD. The label maps are streamed; peak memory is
    bounded by MAX_SAMPLE_VALUES, not by the dataset."""
    dim = num_classes * (UPSAMPLE * ratio) ** 2
    y = _one_hot_patches(sample_patches(labels, ratio, patch_sample_size(num_classes, ratio), seed),
                         num_classes, ignore_index)
    mean = y.mean(0)
    y -= mean
    if exact_pca(num_classes, ratio):
        cov = torch.zeros(dim, dim, dtype=torch.float64)
        for chunk in y.split(4096):  # float64 accumulation without a float64 copy of the sample
            cov += chunk.T.double() @ chunk.double()
        _, vecs = torch.linalg.eigh(cov)
        return PatchPCA(mean, vecs[:, -min(dim, len(y)):].flip(1))
    q = min(n, dim, len(y))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, _, v = torch.svd_lowrank(y, q=q, niter=6)
    return PatchPCA(mean, v[:, :q].double())


def fit_reconstruction(labels: Iterable[torch.Tensor], num_classes: int, ratio: int, n: int,
                       ignore_index: int = 255, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit W by PCA of the label patches: returns (basis (D, n), mean (D,)).

    Reconstruction of a patch y from its code z is `basis @ z + mean`; the best code is
    `basis.T @ (y - mean)`, and no linear map of that shape reconstructs the patches with less
    squared error (Eckart-Young).
    """
    return patch_pca(labels, num_classes, ratio, n, ignore_index, seed).basis(n)


@register_decoder("dupsample")
class DUpsamplingDecoder(nn.Module):
    def __init__(self, a: DecoderArgs):
        super().__init__()
        n = a.spec.width
        self.num_classes, self.ratio, self.n = a.num_classes, a.ratio, n
        dim = a.out_channels * UPSAMPLE * UPSAMPLE
        self.fuse = nn.Conv2d(sum(a.channels), n, 3, padding=1, bias=True)
        # W is data-dependent: a placeholder orthonormal basis until `fit` sees the training labels.
        self.register_buffer("basis", nn.init.orthogonal_(torch.empty(dim, n)))
        self.register_buffer("mean", torch.zeros(dim))
        self.log_temperature = nn.Parameter(torch.zeros(1))

    @torch.no_grad()
    def fit(self, labels: Iterable[torch.Tensor], ignore_index: int = 255, seed: int = 0) -> None:
        """Replace W by the PCA basis of these (H, W) training label maps."""
        self.set_reconstruction(*fit_reconstruction(labels, self.num_classes, self.ratio, self.n, ignore_index, seed))

    @torch.no_grad()
    def set_reconstruction(self, basis: torch.Tensor, mean: torch.Tensor) -> None:
        """Install a fitted W (e.g. one fitted once per search and shared by its trials)."""
        self.basis.copy_(basis)
        self.mean.copy_(mean)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        low = feats[-1].shape[-2:]
        fused = torch.cat([F.interpolate(f, size=low, mode="bilinear", align_corners=False) for f in feats[:-1]] + [feats[-1]], 1)
        code = self.fuse(fused)
        patches = F.conv2d(code, self.basis[:, :, None, None], self.mean)
        return F.pixel_shuffle(patches, UPSAMPLE) / self.log_temperature.exp()
