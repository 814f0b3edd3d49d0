"""Training-free scores: one minibatch, a freshly initialised network, no training step.

Each score takes a network built for it (several modify the network they score, so `all_scores`
builds a fresh one per score, seeded) and one minibatch of training images and masks. The
definitions follow the zero-cost proxy reference code (Abdelfattah et al., "Zero-Cost Proxies for
Lightweight NAS", ICLR 2021, as also packaged in NASLib), adapted to segmentation:
- the loss is the pixel cross-entropy with the ignore index, mean over the labelled pixels;
- "weights" are the weights of every convolution (transposed ones too) and linear layer, as in the
  reference, which scores conv/linear layers only (biases, norms, TVConv's affinity maps are left
  out of the sums, though they shape the gradients);
- the network is in training mode (BatchNorm on batch statistics, as the reference scores it) with
  dropout switched off: a random mask would add noise that says nothing about the architecture;
- NASWOT and fisher see every ReLU, functional or module (this space's blocks use both), and only
  activations with one row per image: TVConv's weight generator runs on its affinity maps, not on
  the images, so its activations describe no sample.
Each score keeps the reference's sign, under which higher is meant to be better; on this space the
gradient scores (synflow, snip, grad_norm, fisher) turn out to rank mIoU backwards among nets of
equal GMACs, which is why the screen prefers low fisher (docs/benchmarks.md, training-free scores).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .data import IGNORE, to_float

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
JACOB_K = 1e-5  # Mellor et al.'s regulariser of the correlation eigenvalues
NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


def pixel_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, masks.long(), ignore_index=IGNORE)


def scored_weights(model: nn.Module) -> list[torch.Tensor]:
    """The tensors the parameter-wise scores sum over: conv and linear weights."""
    return [m.weight for m in model.modules() if isinstance(m, WEIGHTED) and m.weight is not None]


def _scoring_mode(model: nn.Module) -> nn.Module:
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    return model


def _gradients(model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
               loss: Loss) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, dL/dweight) of every scored weight after one backward pass of the minibatch loss."""
    model = _scoring_mode(model)
    model.zero_grad(set_to_none=True)
    loss(model(images), masks).backward()
    return [(w.detach(), w.grad) for w in scored_weights(model) if w.grad is not None]


def synflow(model: nn.Module, images: torch.Tensor) -> float:
    """Tanaka et al. 2020: Σ |θ ⊙ ∂R/∂θ|, R = sum of the outputs of the network with every
    parameter replaced by |θ| on an all-ones input. Norm layers are bypassed (the reference's
    bn=False): R is then a product of weight magnitudes along paths, not of batch statistics.
    GroupNorm too: TVConv's generator sees constant maps here, which a GroupNorm would turn into
    zeros and every TVConv kernel with them. Float64, since R multiplies weights over every
    layer. Modifies `model`."""
    model = _scoring_mode(model.double())
    for m in model.modules():
        if isinstance(m, NORMS):
            m.forward = _identity  # an instance attribute: every call of this module passes through
    with torch.no_grad():
        for t in model.state_dict().values():  # buffers too, as the reference does
            if t.is_floating_point():
                t.abs_()
    model.zero_grad(set_to_none=True)
    model(torch.ones(1, *images.shape[1:], dtype=torch.float64, device=images.device)).sum().backward()
    return float(sum((w.detach() * w.grad).abs().sum() for w in scored_weights(model) if w.grad is not None))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def snip(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, loss: Loss = pixel_loss) -> float:
    """Lee et al. 2019, connection sensitivity: Σ |θ ⊙ ∂L/∂θ|."""
    return float(sum((w * g).abs().sum() for w, g in _gradients(model, images, masks, loss)))


def grad_norm(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, loss: Loss = pixel_loss) -> float:
    """Σ over weight tensors of ||∂L/∂W||₂ (the reference sums per-tensor norms, not one global norm)."""
    return float(sum(g.norm() for _, g in _gradients(model, images, masks, loss)))


def fisher(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, loss: Loss = pixel_loss) -> float:
    """Theis et al. 2018, channel saliency: for every output channel k of every conv and linear layer
    (its activation a before any norm or ReLU, as in the reference), 0.5 · mean over images n of
    (Σ over pixels a ⊙ ∂L/∂a)², summed over channels and layers.

    The reference broadcasts each channel's value over the channel's weights before summing, which
    weighs a channel by its fan-in; that is a bookkeeping artefact of its pruning code, left out here."""
    model, n, acts = _scoring_mode(model), len(images), []

    def keep(module: nn.Module, inputs, out: torch.Tensor) -> torch.Tensor | None:
        if out.shape[0] != n or not out.requires_grad:
            return None
        acts.append(out)
        return out.clone()  # a following in-place ReLU then changes the copy, not the kept activation

    handles = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, WEIGHTED)]
    try:
        value = loss(model(images), masks)
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(value, acts, allow_unused=True)
    total = 0.0
    for a, g in zip(acts, grads):
        if g is not None:
            per_channel = (a * g).sum(dim=tuple(range(2, a.dim()))) if a.dim() > 2 else a * g
            total += float(0.5 * per_channel.detach().double().pow(2).mean(0).sum())
    return total


def jacob_cov(model: nn.Module, images: torch.Tensor) -> float:
    """Mellor et al. 2021 (v1): with J_n = ∂(Σ outputs)/∂x_n per image and λ the eigenvalues of
    the images' correlation matrix of J, -Σ log(λ + k) + 1/(λ + k). NaN when some J is constant
    (its correlation is undefined), as the reference's failure value."""
    model = _scoring_mode(model)
    x = images.detach().clone().requires_grad_(True)
    model(x).sum().backward()
    jac = x.grad.reshape(len(x), -1).double()
    corr = torch.corrcoef(jac)
    if not torch.isfinite(corr).all():
        return math.nan
    lam = torch.linalg.eigvalsh(corr).clamp_min(0.0)  # symmetric: negative values are rounding
    return float(-(torch.log(lam + JACOB_K) + 1.0 / (lam + JACOB_K)).sum())


@contextlib.contextmanager
def relu_codes(n: int) -> Iterator[torch.Tensor]:
    """While active, every ReLU output with one row per image adds its binary codes c to the kernel
    K = Σ c cᵀ + (1 - c)(1 - c)ᵀ, i.e. N_A minus the Hamming distances (the yielded (n, n) tensor).

    F.relu is wrapped for the duration since nn.ReLU calls it too, so both kinds are seen."""
    kernel = torch.zeros(n, n, dtype=torch.float64)
    original = F.relu

    def counting(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        out = original(input, inplace=inplace)
        if out.dim() > 1 and out.shape[0] == n:
            c = (out.detach() > 0).reshape(n, -1).double().cpu()
            kernel.add_(c @ c.T + (1 - c) @ (1 - c).T)
        return out

    F.relu = counting
    try:
        yield kernel
    finally:
        F.relu = original


def naswot(model: nn.Module, images: torch.Tensor) -> float:
    """Mellor et al. 2021 (v2): log |det K| of the ReLU-code kernel of the images (`relu_codes`)."""
    model = _scoring_mode(model)
    with relu_codes(len(images)) as kernel, torch.no_grad():
        model(images)
    return float(torch.linalg.slogdet(kernel).logabsdet)


NAMES = ("synflow", "snip", "grad_norm", "fisher", "jacob_cov", "naswot")


@dataclass(frozen=True)
class Scores:
    synflow: float
    snip: float
    grad_norm: float
    fisher: float
    jacob_cov: float
    naswot: float
    seconds: float  # all six together, building the networks included

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def network_factory(model: Callable[[], nn.Module] | object, masks: torch.Tensor, seed: int,
                    reconstruction=None) -> Callable[[], nn.Module]:
    """A builder of the same freshly initialised network on every call: `model` is a callable
    returning a network, or an ArchSpec (DUpsampling's W then fitted on `masks` unless the
    `reconstruction` (basis, mean) is given, as training would fit it on the training labels)."""
    from search_spaces import ArchSpec, build_model
    from search_spaces.blocks.dupsample import DUpsamplingDecoder, fit_reconstruction

    if not isinstance(model, ArchSpec):
        def seeded() -> nn.Module:
            torch.manual_seed(seed)
            return model()
        return seeded
    spec = model
    if spec.decoder.kind == "dupsample" and reconstruction is None:
        reconstruction = fit_reconstruction(masks, spec.input.num_classes, spec.ratio, spec.decoder.width, IGNORE, seed)

    def build() -> nn.Module:
        torch.manual_seed(seed)
        net = build_model(spec)
        if isinstance(net.decoder, DUpsamplingDecoder):
            net.decoder.set_reconstruction(*reconstruction)
        return net
    return build


def all_scores(model: Callable[[], nn.Module] | object, images: torch.Tensor, masks: torch.Tensor, seed: int = 0,
               reconstruction=None, loss: Loss = pixel_loss, device: str = "cpu") -> Scores:
    """Every score of one architecture (an ArchSpec or a network builder) on one minibatch: uint8
    images are scaled as training scales them. Deterministic given `seed`; the caller's random
    state is left as it was."""
    start = time.perf_counter()
    x = (to_float(images) if images.dtype == torch.uint8 else images.float()).to(device)
    y = masks.long().to(device)
    with torch.random.fork_rng(devices=[]):
        fresh = network_factory(model, masks, seed, reconstruction)
        build = lambda: fresh().to(device)  # noqa: E731
        values = {"synflow": synflow(build(), x), "snip": snip(build(), x, y, loss),
                  "grad_norm": grad_norm(build(), x, y, loss), "fisher": fisher(build(), x, y, loss),
                  "jacob_cov": jacob_cov(build(), x), "naswot": naswot(build(), x)}
    return Scores(**values, seconds=time.perf_counter() - start)
