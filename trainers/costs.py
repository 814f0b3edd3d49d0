"""Cost measurement, the one module everything uses: GMACs, parameters, latency, peak memory.

Conventions (stated wherever a figure is shown):
- GMACs: fvcore's count, one multiply-add = one, batch 1, eval mode, at the spec's input size.
  Convolutions (incl. transposed, grouped, dilated), BatchNorm, bilinear upsampling, pooling and
  TVConv's per-pixel multiply-adds (an einsum) are counted; elementwise add/mul/div/ReLU, channel
  shuffle, pixel (un)shuffle, unfold (im2col) and max-pool are deliberately zero (data movement or
  negligible elementwise work, as in fvcore's own convention). TVConv is counted with its cached
  kernels: its weight generator does not run at inference.
- params: trainable parameters; params_deployed: what inference needs (TVConv's cached per-pixel
  kernels instead of its generator and affinity maps, plus DUpsampling's fixed matrix).
- latency_ms: batch 1, eval, inference mode, after warm-up, median of N timed runs with the IQR;
  CUDA timed with events after synchronisation, CPU at a fixed thread count. Backend torch (eager,
  `trainers.timing`) or onnxruntime (the exported graph, `trainers.deploy`): `BACKENDS` below.
- peak_mem_mb: peak activation memory of one batch-1 inference, weights excluded. CUDA: the
  allocator's peak minus what was allocated before the call. CPU: the peak of the running sum of
  the profiler's allocation/free events during the call (repeatable to the byte).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from search_spaces import ArchSpec, build_model
from search_spaces.blocks import TVConv
from search_spaces.blocks.dupsample import DUpsamplingDecoder

from .deploy import available_providers, measure_onnx_latency
from .device import Device
from .timing import LatencyStats, example_input, measure_latency, timing_lock, warm_caches

# Ops that cost no multiply-adds by this project's convention (see the module docstring).
ZERO_COST_OPS = (
    "aten::add", "aten::add_", "aten::sub", "aten::mul", "aten::mul_", "aten::div", "aten::relu",
    "aten::relu_", "aten::pixel_shuffle", "aten::pixel_unshuffle", "aten::im2col", "aten::max_pool2d",
    "aten::exp", "aten::transpose", "aten::reshape", "aten::view", "aten::feature_dropout",
)


@dataclass(frozen=True)
class Costs:
    params: int
    params_deployed: int
    gmacs: float
    latency_ms: float
    latency_iqr_ms: float
    peak_mem_mb: float
    device: str

    def to_dict(self) -> dict:
        return asdict(self)


def einsum_macs(inputs: list, outputs: list) -> int:
    """Exact multiply-adds of a two-operand einsum: the size of its full index space.

    (fvcore's own handle reads a rounded figure off numpy's einsum_path printout.)
    """
    from fvcore.nn.jit_handles import get_shape

    equation = inputs[0].toIValue().replace(" ", "")
    operands = inputs[1].node().inputs()
    sizes: dict[str, int] = {}
    for letters, tensor in zip(equation.split("->")[0].split(","), operands):
        sizes.update(zip(letters, get_shape(tensor)))
    total = 1
    for n in sizes.values():
        total *= n
    return total


def flop_analysis(model: nn.Module, spec: ArchSpec):
    """fvcore's FlopCountAnalysis of one batch-1 eval forward, with this project's op handles."""
    from fvcore.nn import FlopCountAnalysis

    warm_caches(model, spec)
    analysis = FlopCountAnalysis(model, example_input(spec))
    analysis.set_op_handle(**{op: None for op in ZERO_COST_OPS})
    analysis.set_op_handle("aten::einsum", einsum_macs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return analysis


def count_gmacs(model: nn.Module, spec: ArchSpec) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return flop_analysis(model, spec).total() / 1e9


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_deployed_params(model: nn.Module) -> int:
    total = count_params(model)
    for m in model.modules():
        if isinstance(m, TVConv):
            total += m.channels * m.kernel**2 * m.size[0] * m.size[1] - count_params(m)
        elif isinstance(m, DUpsamplingDecoder):
            total += m.basis.numel() + m.mean.numel()
    return total


def measure_peak_memory_mb(model: nn.Module, spec: ArchSpec, device: str | Device = "cpu") -> float:
    """Peak activation memory (MB = 2^20 bytes) of one batch-1 inference, weights excluded."""
    device = Device.of(device)
    model = model.to(device.torch).eval()
    warm_caches(model, spec, device)
    x = example_input(spec, device)
    if device.is_cuda:
        card = device.torch
        torch.cuda.synchronize(card)
        torch.cuda.reset_peak_memory_stats(card)
        base = torch.cuda.memory_allocated(card)
        with torch.inference_mode():
            model(x)
        torch.cuda.synchronize(card)
        return (torch.cuda.max_memory_allocated(card) - base) / 2**20
    return _cpu_peak_bytes(model, x) / 2**20


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler back-end's C++ start/stop lines (they bypass Python's logging)."""
    import os
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _cpu_peak_bytes(model: nn.Module, x: torch.Tensor) -> int:
    # autograd's profiler records the same allocation events as torch.profiler's (the same peak to the
    # byte on 16 nets) at a third of the time, and without importing TorchDynamo (1-2 s in each new process)
    with _quiet_stderr(), torch.autograd.profiler.profile(profile_memory=True) as prof, torch.inference_mode():
        model(x)
    # Memory events carry signed byte counts (+alloc, -free); their running sum in time order is the
    # live activation memory, since the weights were allocated before profiling began.
    events = sorted(((e.start_ns(), e.nbytes()) for e in prof.kineto_results.events() if e.nbytes() != 0))
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@dataclass(frozen=True)
class LatencyBackend:
    """One way to time a net. Every backend serves the CPU; one with a `cuda_provider` serves a GPU
    only where ONNX Runtime has that provider, and says why not (`missing`) and what to do (`fix`)."""
    name: str
    measure: Callable[..., LatencyStats]  # (model, spec, device, warmup, runs, threads)
    cuda_provider: str | None = None
    missing: str = ""
    fix: str = ""

    def serves(self, device: str | Device, providers: Sequence[str] | None = None) -> bool:
        """Whether it can time on `device`, given ONNX Runtime's providers (this machine's unless given)."""
        if self.cuda_provider is None or not Device.of(device).is_cuda:
            return True
        return self.cuda_provider in (available_providers() if providers is None else providers)


BACKENDS = {b.name: b for b in (
    LatencyBackend("torch", measure_latency),
    LatencyBackend("onnxruntime", measure_onnx_latency, "CUDAExecutionProvider",
                   missing="this onnxruntime has no CUDA provider",
                   fix="install onnxruntime-gpu, or use --latency-backend torch"),
)}
LATENCY_BACKENDS = tuple(BACKENDS)
# `auto` prefers the exported graph, since that is what a deployment runs; eager PyTorch serves everywhere.
AUTO_ORDER = ("onnxruntime", "torch")


def default_backend(device: str | Device, providers: Sequence[str] | None = None) -> str:
    """The latency backend `auto` means on `device`: the first of AUTO_ORDER that serves it."""
    return next(name for name in AUTO_ORDER if BACKENDS[name].serves(device, providers))


def resolve_backend(requested: str, device: str | Device, where: str = "") -> str:
    """`auto` as `default_backend` on this machine; a named backend as it is, or a one-line
    ValueError where it cannot time on `device` here (`where` qualifies the device in it)."""
    if requested == "auto":
        return default_backend(device)
    backend = BACKENDS[requested]
    if not backend.serves(device):
        raise ValueError(f"--latency-backend {backend.name}: {backend.missing}{where} ({backend.fix})")
    return requested


def measure_backend_latency(spec: ArchSpec, device: str | Device = "cpu", runs: int = 50, warmup: int = 10,
                            threads: int = 1, model: nn.Module | None = None, backend: str = "torch") -> LatencyStats:
    """`spec`'s latency alone, as `measure_costs` times it (builds the model unless one is given)."""
    if backend not in BACKENDS:
        raise ValueError(f"latency backend {backend!r}: one of {', '.join(LATENCY_BACKENDS)}")
    model = (build_model(spec) if model is None else model).eval()
    return BACKENDS[backend].measure(model, spec, Device.of(device), warmup, runs, threads)


def measure_costs(spec: ArchSpec, device: str | Device = "cpu", runs: int = 50, warmup: int = 10,
                  threads: int = 1, model: nn.Module | None = None, backend: str = "torch") -> Costs:
    """Every cost of `spec` at its input size; builds the model unless one is given. Latency is
    PyTorch eager's (`backend` torch) or ONNX Runtime's on the exported graph (onnxruntime).
    `Costs.device` is `device` as given (a setting's `cuda` stays `cuda`)."""
    label, device = str(device), Device.of(device)
    model = build_model(spec) if model is None else model
    model.eval()
    gmacs = count_gmacs(model, spec)
    lat = measure_backend_latency(spec, device, runs, warmup, threads, model, backend)
    with timing_lock(device) as lock, lock.shared():  # GPU work, so a neighbour's timing waits for it
        mem = measure_peak_memory_mb(model, spec, device)
    return Costs(count_params(model), count_deployed_params(model), gmacs, lat.median_ms, lat.iqr_ms, mem, label)
