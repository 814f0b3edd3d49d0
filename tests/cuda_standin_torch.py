"""The CUDA stand-in's torch side (tests/cuda_standin.py is the rest): the mode that runs torch calls
on the CPU, torch.cuda's Event and Stream, and autocast."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

if TYPE_CHECKING:
    from cuda_standin import CudaStandIn

_AUTOCAST = torch.amp.autocast_mode.autocast  # torch's own, before the stand-in replaces torch.autocast
_T = torch.Tensor
_HOST_READS = {_T.item, _T.tolist, _T.__float__, _T.__int__, _T.__bool__, _T.__index__, _T.__format__, _T.__repr__}


class OnTheCpu(TorchFunctionMode):
    """Runs every torch call on the CPU after checking its device arguments as torch would."""

    def __init__(self, standin: CudaStandIn):
        super().__init__()
        self.s = standin

    def __torch_function__(self, func, types, args=(), kwargs=None):
        s, kwargs = self.s, dict(kwargs or {})
        if func is _T.to:
            tensor, *rest = args
            if rest and isinstance(rest[0], torch.Tensor):  # .to(other): other's device and dtype
                other = rest.pop(0)
                card = s.card_of(other)
                rest = [torch.device("cpu") if card is None else torch.device("cuda", card), other.dtype, *rest]
            copy = kwargs.pop("copy", False)
            device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*rest, **kwargs)
            return s.move(tensor, device, dtype, non_blocking, copy, memory_format)
        if func is _T.cuda:
            device = kwargs.get("device", (*args[1:], None)[0])
            target = torch.device("cuda") if device is None else device
            if s.cuda_index(target) is None:
                raise RuntimeError("Invalid device, must be cuda device")
            return s.move(args[0], target, non_blocking=kwargs.get("non_blocking", False))
        if func is _T.cpu:
            return s.move(args[0], "cpu")
        if func is _T.pin_memory:
            return s.pin(args[0])
        if func is _T.is_pinned:
            return s.is_pinned(args[0])
        if func in (_T.numpy, _T.__array__) and s.card_of(args[0]) is not None:
            raise TypeError(f"can't convert cuda:{s.card_of(args[0])} device type tensor to numpy. "
                            "Use Tensor.cpu() to copy the tensor to host memory first.")
        if func is _T.copy_:
            dst, src, non_blocking = args[0], args[1], kwargs.get("non_blocking", (*args[2:], False)[0])
            if s.card_of(dst) is None and s.card_of(src) is not None and not non_blocking:
                s.counts.host_reads += 1
            if s.card_of(dst) is not None and s.card_of(src) is None and non_blocking and not s.is_pinned(src):
                s.counts.unpinned_non_blocking += 1
            return func(*args, **kwargs)
        if func in _HOST_READS and s.card_of(args[0]) is not None:
            s.counts.host_reads += 1
        card = None
        if kwargs.get("device") is not None:
            card = s.cuda_index(kwargs["device"])
            if card is not None:
                kwargs["device"] = torch.device("cpu")
        out = func(*args, **kwargs)
        if card is None:  # a result computed from a tensor on a card is on that card
            card = next((c for c in map(s.card_of, tree_flatten((args, kwargs))[0]) if c is not None), None)
        if card is not None:
            s.book(out, card)
        return out


class Stream:
    """torch.cuda.Stream: the device it is on, and the same device argument rule."""

    def __init__(self, device=None, priority: int = 0, stream_id: int = 0, device_index: int | None = None,
                 device_type: int = 1):
        self.device_index = torch.cuda.device(device).idx if device_index is None else device_index
        self.device = torch.device("cuda", self.device_index)
        self.stream_id, self.priority = stream_id, priority

    def synchronize(self) -> None:
        with torch.cuda.device(self.device_index):
            torch.cuda.synchronize()

    def query(self) -> bool:
        return True


class Event:
    """torch.cuda.Event with the runtime's rules: timing needs enable_timing on both events, both
    recorded, and both complete, else the error the CUDA runtime gives. Nothing runs asynchronously
    here, so an event counts as complete once the host has waited for it (`synchronize`, a stream's
    or the device's): timing one before that would be a race on a GPU."""
    standin: CudaStandIn

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False,
                 external: bool = False):
        self.enable_timing, self._number, self._device, self._at = enable_timing, None, None, None

    def record(self, stream=None) -> None:
        if stream is None:
            stream = torch.cuda.current_stream()  # what torch's Event.record does
        if not isinstance(stream, Stream):
            raise TypeError(f"record(): incompatible function arguments: expected a torch.cuda.Stream, got {stream!r}")
        s = self.standin
        s.recorded += 1
        self._number, self._device, self._at = s.recorded, stream.device_index, time.perf_counter_ns()

    def query(self) -> bool:
        return self._number is None or self._number <= self.standin.complete[self._device]

    def synchronize(self) -> None:
        if self._number is not None:
            complete = self.standin.complete
            complete[self._device] = max(complete[self._device], self._number)

    def elapsed_time(self, end: Event) -> float:
        if not (self.enable_timing and end.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        if self._number is None or end._number is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        if not (self.query() and end.query()):  # cudaEventElapsedTime's cudaErrorNotReady
            raise RuntimeError("CUDA error: device not ready")
        self.standin.counts.events_timed += 1
        return (end._at - self._at) / 1e6


def autocast(device_type: str, dtype=None, enabled: bool = True, cache_enabled=None):
    """torch.autocast: torch's own checks for `device_type`, then the CPU autocast of that dtype."""
    checked = _AUTOCAST(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)
    if device_type != "cuda":
        return checked
    return _AUTOCAST("cpu", dtype=checked.fast_dtype, enabled=checked._enabled, cache_enabled=cache_enabled)
