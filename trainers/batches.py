"""Training batches made on the trial's device: indexed, converted to float, augmented, masks cast.

Augmentation, per sample: a zoom-in by s ~ U(scale) (resize to max(h, round(h*s)) x
max(w, round(w*s)), images bilinear, masks nearest as `F.interpolate` resizes them), a crop back
to h x w at a uniform integer offset, and a horizontal flip with p = 0.5. The random numbers and
the sampling positions are computed on the CPU from the caller's generator, so a seed gives the
same augmentation on any device; the batch is resampled where it lies, in one `grid_sample` for
the images and one gather per axis for the masks (never blended: always label values).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import Split, to_float
from .device import Device
from .gpu_share import usable_bytes

# A GPU holds the uint8 split when it takes at most this share of the memory the trial may still
# use (its share of the card): most of it stays for training; a larger split stays on the host.
RESIDENT_SHARE = 1 / 16


@dataclass(frozen=True)
class Draw:
    """One batch's augmentation: per sample the resized size, the crop's offset and the flip."""

    height: torch.Tensor  # int64 (N,) of the zoomed image, >= h
    width: torch.Tensor
    top: torch.Tensor  # int64 (N,) in 0 .. height - h
    left: torch.Tensor
    flip: torch.Tensor  # bool (N,)


def draw(n: int, h: int, w: int, gen: torch.Generator, scale: tuple[float, float] = (1.0, 1.5)) -> Draw:
    """`n` samples' augmentation from one draw of `gen` (a CPU generator)."""
    u = torch.rand(4, n, generator=gen, dtype=torch.float64)
    s = scale[0] + (scale[1] - scale[0]) * u[0]
    height, width = (torch.round(size * s).clamp_min(size) for size in (h, w))
    # floor(u * count) is uniform on 0..count-1; the clamp only guards float rounding at u -> 1
    top = (u[1] * (height - h + 1)).floor().minimum(height - h)
    left = (u[2] * (width - w + 1)).floor().minimum(width - w)
    return Draw(height.long(), width.long(), top.long(), left.long(), u[3] < 0.5)


def _axis(size: int, zoomed: torch.Tensor, offset: torch.Tensor, flip: torch.Tensor | None):
    """Where each output position of one axis reads the source: grid_sample's normalised
    coordinate (bilinear) and the integer index (nearest), per sample."""
    j = torch.arange(size)
    if flip is not None:
        j = torch.where(flip[:, None], size - 1 - j, j)
    pos = offset[:, None] + j  # the position in the zoomed image
    # the source coordinate (pos + 0.5) * size / zoomed - 0.5, normalised as grid_sample reads it
    coord = (2 * pos + 1).double() / zoomed[:, None] - 1
    # F.interpolate's nearest rule in its float32 arithmetic, so masks equal the resized-and-cropped ones
    ratio = torch.tensor(float(size)).div(zoomed.float())
    index = (pos.float() * ratio[:, None]).floor().long().clamp_max(size - 1)
    return coord.float(), index


def to_device(t: torch.Tensor, device: torch.device | Device) -> torch.Tensor:
    """A host tensor on `device`; to a GPU through pinned memory, so the copy does not wait on the host."""
    device = device.torch if isinstance(device, Device) else device
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def resample(images: torch.Tensor, masks: torch.Tensor, d: Draw) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply `d` to float images (N, C, h, w) and integer masks (N, h, w) on their device."""
    n, _, h, w = images.shape
    gy, rows = _axis(h, d.height, d.top, None)
    gx, cols = _axis(w, d.width, d.left, d.flip)
    rows = rows + torch.arange(n)[:, None] * h  # into the (N*h, w) view of the masks
    dev = images.device
    gx, gy, rows, cols = (to_device(t, dev) for t in (gx, gy, rows, cols))
    grid = torch.stack((gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)), -1).to(images.dtype)
    # border padding: F.interpolate clamps source coordinates to the image the same way
    out_images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out_masks = masks.reshape(n * h, w).index_select(0, rows.flatten()).view(n, h, w)
    return out_images, torch.gather(out_masks, 2, cols[:, None, :].expand(n, h, w))


def augment(images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator,
            scale: tuple[float, float] = (1.0, 1.5)) -> tuple[torch.Tensor, torch.Tensor]:
    """Random zoom-in (scale >= 1), crop back to size and horizontal flip, for the whole batch."""
    n, _, h, w = images.shape
    return resample(images, masks, draw(n, h, w, gen, scale))


class TrainBatches:
    """A training split as batches on `device`.

    On a GPU the uint8 split is copied there once when it fits (`RESIDENT_SHARE`): a batch is
    then indexed on the device and only its indices cross the bus. A larger split stays on the
    host and each batch crosses as uint8 through pinned memory: a quarter of float32's bytes,
    an eighth of int64 masks'.
    """

    def __init__(self, split: Split, device: str | Device):
        target = Device.of(device)
        self.device = target.torch
        self.staged = target.is_cuda and split.nbytes > RESIDENT_SHARE * usable_bytes(target)
        self.images, self.masks = split.images, split.masks
        if not self.staged:  # a no-op on the CPU
            self.images, self.masks = self.images.to(self.device), self.masks.to(self.device)

    def __call__(self, idx: torch.Tensor, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [-1, 1] and int64 masks of samples `idx`, augmented when given `gen`."""
        if self.staged:
            x, y = to_device(self.images[idx], self.device), to_device(self.masks[idx], self.device)
        else:
            idx = to_device(idx, self.device)
            x, y = self.images[idx], self.masks[idx]
        x = to_float(x)
        if gen is not None:
            x, y = augment(x, y, gen)
        return x, y.long()
