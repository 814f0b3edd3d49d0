"""DUpsampling decoder: data-dependent upsampling.

Tian et al., "Decoders Matter for Semantic Segmentation: Data-Dependent Decoding Enables Flexible
Feature Aggregation", CVPR 2019. Earlier stages' features are *downsampled* to the lowest
resolution and fused with the last stage into N channels; a fixed linear reconstruction matrix W,
fitted in closed form (PCA) on the training set's one-hot label patches, expands them to
(s x s x classes) patches and depth-to-space restores full resolution. A learnable temperature
sharpens the softmax (the paper's adaptive-temperature softmax): the logits are divided by T.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_decoder
from .common_decoder import DecoderArgs
from .decoders import UPSAMPLE

MAX_PATCHES = 20_000  # PCA on a seeded subsample; enough for a stable top-N basis
EXACT_PCA_MAX_DIM = 2048  # above this patch dimension, use a randomized low-rank SVD


def label_patches(label: torch.Tensor, num_classes: int, ratio: int, ignore_index: int = 255) -> torch.Tensor:
    """(P, D) one-hot patch vectors of one (H, W) label map, in the decoder's output channel order.

    The decoder's output goes through pixel_shuffle(8), then the model's pixel_shuffle(ratio); the
    inverse of that composition applied to the one-hot map gives each patch's target vector.
    Ignored pixels are all-zero.
    """
    valid = label != ignore_index
    onehot = F.one_hot(torch.where(valid, label, 0).long(), num_classes).permute(2, 0, 1).float()
    onehot = onehot * valid.unsqueeze(0)
    patches = F.pixel_unshuffle(F.pixel_unshuffle(onehot.unsqueeze(0), ratio), UPSAMPLE)
    return patches.flatten(2).squeeze(0).T


def fit_reconstruction(labels: Iterable[torch.Tensor], num_classes: int, ratio: int, n: int,
                       ignore_index: int = 255, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit W by PCA of the label patches: returns (basis (D, n), mean (D,)).

    Reconstruction of a patch y from its code z is `basis @ z + mean`; the best code is
    `basis.T @ (y - mean)`, and no linear map of that shape reconstructs the patches with less
    squared error (Eckart-Young).
    """
    y = torch.cat([label_patches(lab, num_classes, ratio, ignore_index) for lab in labels]).double()
    if len(y) == 0:
        raise ValueError("fit_reconstruction needs at least one label map")
    gen = torch.Generator().manual_seed(seed)
    if len(y) > MAX_PATCHES:
        y = y[torch.randperm(len(y), generator=gen)[:MAX_PATCHES]]
    mean = y.mean(0)
    yc = y - mean
    dim = y.shape[1]
    q = min(n, dim, len(y))
    if dim <= EXACT_PCA_MAX_DIM:
        _, vecs = torch.linalg.eigh(yc.T @ yc)
        top = vecs[:, -q:].flip(1)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, _, v = torch.svd_lowrank(yc, q=q, niter=6)
        top = v[:, :q]
    basis = torch.zeros(dim, n, dtype=torch.float64)
    basis[:, :q] = top  # fewer patches than N: the spare codes are unused
    return basis.float(), mean.float()


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
        basis, mean = fit_reconstruction(labels, self.num_classes, self.ratio, self.n, ignore_index, seed)
        self.basis.copy_(basis)
        self.mean.copy_(mean)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        low = feats[-1].shape[-2:]
        fused = torch.cat([F.interpolate(f, size=low, mode="bilinear", align_corners=False) for f in feats[:-1]] + [feats[-1]], 1)
        code = self.fuse(fused)
        patches = F.conv2d(code, self.basis[:, :, None, None], self.mean)
        return F.pixel_shuffle(patches, UPSAMPLE) / self.log_temperature.exp()
