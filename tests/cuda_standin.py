"""A CUDA stand-in, so the tests run the project's CUDA branches on a machine without a GPU.

Only the native layer under `torch.cuda` is replaced: the `torch._C._cuda_*` entry points and the
few `torch.cuda` globals bound to native objects (device properties, the runtime's memory query,
the device guard, events and streams). torch's own Python functions above it run unchanged, so
each call the project makes meets torch's own argument rules: `set_per_process_memory_fraction`
refuses `torch.device("cuda")` because torch's `_get_device_index` does, `mem_get_info` accepts it
because torch reads it as the current device. The native stubs add the rules the driver enforces
(an index within the device count, an event completed before it is timed).

Tensors and modules sent to `cuda`/`cuda:N` stay on the CPU: a TorchFunctionMode parses every
device argument with torch's own parsing, checks the index, and makes the copy on the CPU that a
transfer would make. It books each copy, and every result computed from one, on its card; the
bookings are what `memory_allocated`, the peak, `mem_get_info` and the per-process memory cap see
(a booking past the cap is torch's OutOfMemoryError). Reads of a booked tensor on the host (`item`,
`tolist`, `float`, a copy to the CPU) are counted, as are pinned copies and synchronisations.
Tensors report the CPU as their device. `torch.autocast("cuda", dtype)` is checked by torch's own
autocast (bfloat16 needs compute capability 8) and then runs as the CPU autocast of that dtype.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Iterator

import pytest
import torch
from torch.utils._pytree import tree_flatten

from cuda_standin_torch import Event, OnTheCpu, Stream, autocast

_T = torch.Tensor


@dataclass(frozen=True)
class Card:
    """What `get_device_properties` reports."""
    name: str = "stand-in GPU"
    uuid: str = "GPU-5eed0000-0000-0000-0000-000000000000"
    total_memory: int = 16 * 2**30
    major: int = 8  # 8.0 and later have bfloat16
    minor: int = 0
    multi_processor_count: int = 108


@dataclass
class Memory:
    """One card's bookkeeping; `reserved` keeps freed bytes until empty_cache, as the caching allocator does."""
    total: int
    fraction: float = 1.0
    allocated: int = 0
    peak: int = 0
    reserved: int = 0

    def stats(self) -> dict:
        return {"allocated_bytes": {"all": {"current": self.allocated, "peak": self.peak}},
                "reserved_bytes": {"all": {"current": self.reserved, "peak": self.reserved}}}


@dataclass
class Counts:
    host_reads: int = 0  # a booked tensor read on the host: each one waits for the card
    synchronizes: int = 0
    pinned: int = 0  # pin_memory copies
    unpinned_non_blocking: int = 0  # non_blocking host-to-card copies from pageable memory (silently synchronous)
    events_timed: int = 0


@dataclass
class CudaStandIn:
    """Installed with `installed(monkeypatch)`, for the test's duration (the `cuda_standin` fixture)."""
    cards: tuple[Card, ...] = (Card(),)
    counts: Counts = field(default_factory=Counts)
    current: int = 0

    def __post_init__(self) -> None:
        self.memory = [Memory(c.total_memory) for c in self.cards]
        self._booked: dict[int, int] = {}  # storage address -> card
        self._pinned: set[int] = set()
        self.recorded = 0  # events recorded so far; an event is complete once a sync covers its number
        self.complete = [0] * len(self.cards)

    # --- the native layer -------------------------------------------------------------------
    def ordinal(self, index) -> int:
        if not isinstance(index, int) or isinstance(index, bool):  # the bindings take an int only
            raise TypeError(f"incompatible function arguments: expected a device index, got {index!r}")
        if not 0 <= index < len(self.cards):
            raise RuntimeError("CUDA error: invalid device ordinal")
        return index

    def _exchange(self, index: int) -> int:
        if index < 0:
            return -1
        before, self.current = self.current, self.ordinal(index)
        return before

    def _synchronize(self) -> None:
        self.counts.synchronizes += 1
        self.complete[self.current] = self.recorded

    def _set_fraction(self, fraction: float, index: int) -> None:
        self.memory[self.ordinal(index)].fraction = fraction

    def _reset_peak(self, index: int) -> None:
        m = self.memory[self.ordinal(index)]
        m.peak = m.allocated

    def _empty_cache(self) -> None:
        for m in self.memory:
            m.reserved = m.allocated

    def _mem_get_info(self, index: int) -> tuple[int, int]:
        m = self.memory[self.ordinal(index)]
        return m.total - m.reserved, m.total

    @contextlib.contextmanager
    def installed(self, monkeypatch) -> Iterator[CudaStandIn]:
        import torch._dynamo  # noqa: F401  (reads the build at import: it must see the real, CUDA-less one)

        natives = {
            "_cuda_getDeviceCount": lambda: len(self.cards),
            "_cuda_getDevice": lambda: self.current,
            "_cuda_setDevice": self._exchange,
            "_cuda_setMemoryFraction": self._set_fraction,
            "_cuda_getMemoryFraction": lambda i: self.memory[self.ordinal(i)].fraction,
            "_cuda_memoryStats": lambda i: self.memory[self.ordinal(i)].stats(),
            "_cuda_resetPeakMemoryStats": self._reset_peak,
            "_cuda_resetAccumulatedMemoryStats": self.ordinal,
            "_cuda_emptyCache": self._empty_cache,
            "_cuda_synchronize": self._synchronize,
            "_cuda_getCurrentStream": lambda i: (0, self.ordinal(i), 1),
            "_cuda_getDefaultStream": lambda i: (0, self.ordinal(i), 1),
        }
        for name, fn in natives.items():
            monkeypatch.setattr(torch._C, name, fn, raising=False)
        runtime = type("Runtime", (), {"cudaMemGetInfo": staticmethod(self._mem_get_info)})()
        patches = {
            "_initialized": True, "_cached_device_count": None, "_cudart": runtime,
            "_exchange_device": self._exchange, "_maybe_exchange_device": self._exchange,
            "_get_device_properties": lambda i: self.cards[self.ordinal(i)],
            "default_generators": tuple(torch.Generator() for _ in self.cards),  # torch.manual_seed seeds these
            "Event": type("Event", (Event,), {"standin": self}),
            "Stream": Stream,
        }
        for name, value in patches.items():
            monkeypatch.setattr(torch.cuda, name, value, raising=False)
        monkeypatch.setattr(torch, "autocast", autocast)
        with OnTheCpu(self):
            yield self

    # --- tensors on a card ------------------------------------------------------------------
    def card_of(self, t) -> int | None:
        """The card a tensor is booked on; None for a host tensor."""
        if not isinstance(t, torch.Tensor):
            return None
        try:
            return self._booked.get(t.untyped_storage().data_ptr())
        except (RuntimeError, NotImplementedError):  # a tensor without storage
            return None

    def cuda_index(self, device) -> int | None:
        """The card a device argument names (torch's parsing and its current-device rule); None if not CUDA."""
        if isinstance(device, int) and not isinstance(device, bool):
            device = torch.device("cuda", device)  # torch reads a bare int as a CUDA index
        device = torch.device(device)
        if device.type != "cuda":
            return None
        return self.ordinal(torch.cuda._utils._get_device_index(device, optional=True))

    def book(self, out, card: int) -> None:
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or self.card_of(t) is not None:
                continue
            storage = t.untyped_storage()
            address, size = storage.data_ptr(), storage.nbytes()
            if size == 0:
                continue
            m = self.memory[card]
            if m.allocated + size > m.fraction * m.total:
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory. Tried to allocate {size / 2**20:.2f} MiB. GPU {card} has a total capacity "
                    f"of {m.total / 2**30:.2f} GiB, of which this process may use {m.fraction:g}")
            self._booked[address] = card
            m.allocated += size
            m.peak, m.reserved = max(m.peak, m.allocated), max(m.reserved, m.allocated)
            weakref.finalize(storage, self._free, address, card, size)

    def _free(self, address: int, card: int, size: int) -> None:
        if self._booked.pop(address, None) == card:
            self.memory[card].allocated -= size

    def is_pinned(self, t: torch.Tensor) -> bool:
        return t.untyped_storage().data_ptr() in self._pinned

    def pin(self, t: torch.Tensor) -> torch.Tensor:
        if self.card_of(t) is not None:
            raise RuntimeError(f"cannot pin 'torch.cuda.{t.type().split('.')[-1]}' only dense CPU tensors can be pinned")
        if self.is_pinned(t):
            return t
        out = t.clone()
        storage = out.untyped_storage()
        self._pinned.add(storage.data_ptr())
        weakref.finalize(storage, self._pinned.discard, storage.data_ptr())
        self.counts.pinned += 1
        return out

    def move(self, t: torch.Tensor, device, dtype=None, non_blocking=False, copy=False, memory_format=None):
        """`Tensor.to` between the host and the cards: a new tensor, as a transfer makes, booked where it went."""
        target, here = (None if device is None else self.cuda_index(device)), self.card_of(t)
        to_host = device is not None and target is None and here is not None
        kw = {} if memory_format is None else {"memory_format": memory_format}
        if device is None or (target is None and here is None) or (target == here and not copy):
            out = _T.to(t, dtype if dtype is not None else t.dtype, non_blocking, copy, **kw)  # stays where it is
            if here is not None and out is not t:
                self.book(out, here)
            return out
        if to_host and not non_blocking:
            self.counts.host_reads += 1
        if target is not None and here is None and non_blocking and not self.is_pinned(t):
            self.counts.unpinned_non_blocking += 1
        out = _T.to(t, torch.device("cpu"), dtype, False, True, **kw)
        if target is not None:
            self.book(out, target)
        return out


@pytest.fixture
def cuda_standin(monkeypatch, tmp_path) -> Iterator[CudaStandIn]:
    """One stand-in GPU (16 GiB, compute capability 8.0) for the test; GPU lock files in its tmp_path."""
    monkeypatch.setenv("LIGHTSEG_LOCK_DIR", str(tmp_path / "gpu-locks"))
    with CudaStandIn().installed(monkeypatch) as standin:
        yield standin
