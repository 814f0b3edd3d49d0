"""Latency timing shared by both backends: PyTorch eager here, ONNX Runtime in `trainers.deploy`.

Batch 1, eval, inference mode, after warm-up; the median of N timed runs with its spread. CUDA
is timed with events after synchronisation, the CPU at a fixed thread count. Its own module so
that the cost counts (`trainers.costs`) and the exported graph (`trainers.deploy`) both build on
it without either importing the other's internals.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from search_spaces import ArchSpec

from .device import Device
from .gpu_share import DeviceLock


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    iqr_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    device: str
    threads: int


def example_input(spec: ArchSpec, device: str | Device = "cpu", batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, spec.input.in_channels, spec.input.height, spec.input.width, generator=g)
    return x.to(Device.of(device).torch)


def warm_caches(model: nn.Module, spec: ArchSpec, device: str | Device = "cpu") -> None:
    """Run one eval forward so TVConv kernels are cached before anything is counted or timed."""
    model.eval()
    with torch.inference_mode():
        model(example_input(spec, device))


@contextlib.contextmanager
def timing_lock(device: str | Device) -> Iterator[DeviceLock]:
    lock = DeviceLock(device)
    try:
        yield lock
    finally:
        lock.close()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_latency(model: nn.Module, spec: ArchSpec, device: str | Device = "cpu", warmup: int = 10,
                    runs: int = 50, threads: int = 1) -> LatencyStats:
    """Batch-1 eval latency: median and spread of `runs` timed forwards after `warmup`."""
    device = Device.of(device)
    model = model.to(device.torch).eval()
    x = example_input(spec, device)
    times: list[float] = []
    # on a shared GPU no neighbour trains or times while this one warms up and times
    with torch_threads(threads), torch.inference_mode(), timing_lock(device) as lock, lock.exclusive():
        for _ in range(warmup):
            model(x)
        if device.is_cuda:
            torch.cuda.synchronize(device.torch)
            stream = torch.cuda.current_stream(device.torch)  # the model's card's, whichever card is current
            for _ in range(runs):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                model(x)
                end.record(stream)
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(runs):
                t0 = time.perf_counter_ns()
                model(x)
                times.append((time.perf_counter_ns() - t0) / 1e6)
    return latency_stats(times, str(device), threads)


def latency_stats(times: list[float], device: str, threads: int) -> LatencyStats:
    q = statistics.quantiles(times, n=20)  # 5 % steps: q[1] = p10, q[4] = p25, q[14] = p75, q[17] = p90
    return LatencyStats(statistics.median(times), q[14] - q[4], q[1], q[17], min(times), len(times), device, threads)
