"""Sharing one GPU between trials: a memory share per process, a timing lock, clean hand-overs.

Ray gives a trial a fraction of a GPU (`--gpus-per-trial 0.25`: four trials on one card) but
enforces none of it. This module makes the fraction real and keeps the figures honest:

- `claim_share` caps the process's CUDA caching allocator at its fraction of the card, so one
  trial's peak cannot push its neighbours out of memory.
- `DeviceLock` is a node-wide reader-writer lock per GPU (files keyed by the card's UUID, so every
  worker process on the node agrees whatever CUDA_VISIBLE_DEVICES says). Training and evaluation
  steps hold it shared; latency timing holds it exclusive, so a latency is never taken while a
  neighbour trains on the same card. A turnstile gives the timer priority: once it waits, no new
  step starts, and the steps in flight finish first.
- `release` hands a reused worker back clean between trials (cached blocks freed, peak reset).
- `is_fatal_cuda_error` tells a sticky CUDA error (the context is poisoned; every later kernel in
  this process fails) from a recoverable one such as out of memory.
"""
from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from .device import Device

# Texts of errors after which the CUDA context of this process is unusable.
_FATAL_MARKERS = ("CUDA error", "CUDA failure", "illegal memory access", "device-side assert",
                  "unspecified launch failure", "CUBLAS_STATUS", "CUDNN_STATUS_EXECUTION_FAILED", "cudaErrorLaunchFailure")
# ... unless they say the allocation failed, which the next attempt may not meet.
_RECOVERABLE_MARKERS = ("out of memory", "ALLOC_FAILED")


def claim_share(device: Device) -> None:
    """Cap this process's CUDA memory at the device's share of the card (0 < share < 1); no-op otherwise."""
    if device.is_cuda and 0 < device.share < 1 and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(device.share, device.torch)


def usable_bytes(device: str | Device) -> int:
    """The memory this process may still take on its GPU: what the card has free, capped by the
    process's share (`claim_share`) less what it already holds."""
    device = Device.of(device)
    free, total = torch.cuda.mem_get_info(device.torch)
    return int(min(free, share_of_card(device) * total - torch.cuda.memory_reserved(device.torch)))


def share_of_card(device: str | Device) -> float:
    """The memory fraction `claim_share` set for this process (1 where none was set)."""
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # newer torch releases only
    return float(getter(Device.of(device).torch)) if getter else 1.0


def release(device: str | Device) -> None:
    """Free what the last trial left in the caching allocator and reset its peak counter. Never
    raises: it runs in the `finally` of a trial, whose own error (a bad device too) is the news."""
    gc.collect()
    try:
        dev = Device.of(device)
        if dev.is_cuda and torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev.torch)
    except Exception:  # after a sticky error these raise too; the worker is ending anyway
        pass


def is_fatal_cuda_error(exc: BaseException) -> bool:
    """ONNX Runtime's errors are not RuntimeErrors, so any exception's text is read."""
    text = str(exc)
    if isinstance(exc, torch.OutOfMemoryError) or any(m in text for m in _RECOVERABLE_MARKERS):
        return False
    if isinstance(exc, getattr(torch, "AcceleratorError", ())):
        return True
    return isinstance(exc, Exception) and any(m in text for m in _FATAL_MARKERS)


def _lock_dir() -> Path:
    path = Path(os.environ.get("LIGHTSEG_LOCK_DIR") or Path(tempfile.gettempdir()) / f"lightseg-gpu-{os.getuid()}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _card_key(device: Device) -> str:
    index = device.index
    try:
        return str(torch.cuda.get_device_properties(index).uuid)
    except Exception:  # an old driver without UUIDs: the visible index is the best key there is
        return f"visible{os.environ.get('CUDA_VISIBLE_DEVICES', '')}-{index}"


class DeviceLock:
    """Shared for training steps, exclusive for timing; a no-op on the CPU (or with `key=None`)."""

    def __init__(self, device: str | Device, key: str | None = "auto"):
        device = Device.of(device)
        self.enabled = key is not None and (key != "auto" or (device.is_cuda and torch.cuda.is_available()))
        self._sync = device.torch if device.is_cuda and torch.cuda.is_available() else None
        self._holding = False
        if self.enabled:
            name = _card_key(device) if key == "auto" else key
            folder = _lock_dir()
            self._gate = open(folder / f"{name}.gate", "a+")
            self._use = open(folder / f"{name}.use", "a+")

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """A step of GPU work. The hold outlasts the step until a timer waits, so consecutive steps need
        no host synchronisation: the queued kernels are waited for only when a timer is to start."""
        if not self.enabled:
            yield
            return
        if not self._holding:
            fcntl.flock(self._gate, fcntl.LOCK_SH)  # passes at once unless a timer waits
            fcntl.flock(self._gate, fcntl.LOCK_UN)
            fcntl.flock(self._use, fcntl.LOCK_SH)
            self._holding = True
        try:
            yield
        except BaseException:
            self.let_go()
            raise
        if self._timer_waits():
            self.let_go()

    def _timer_waits(self) -> bool:
        try:
            fcntl.flock(self._gate, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # a timer holds the gate while it waits for the steps in flight
            return True
        fcntl.flock(self._gate, fcntl.LOCK_UN)
        return False

    def let_go(self) -> None:
        """End the shared hold: the steps' queued kernels are part of them, so a timer must not overlap them."""
        if self.enabled and self._holding:
            try:
                self._synchronize()
            finally:
                fcntl.flock(self._use, fcntl.LOCK_UN)
                self._holding = False

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        fcntl.flock(self._gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._use, fcntl.LOCK_EX)
            try:
                self._synchronize()
                yield
                self._synchronize()
            finally:
                fcntl.flock(self._use, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._gate, fcntl.LOCK_UN)

    def _synchronize(self) -> None:
        if self._sync is not None:
            torch.cuda.synchronize(self._sync)

    def close(self) -> None:
        if self.enabled:
            self.let_go()
            self._gate.close()
            self._use.close()
