"""The device a trial or a training runs on, made once from its setting: kind, index, memory share.

Settings and stored studies keep the device as the user wrote it (`cpu`, `cuda`, `cuda:1`); code
below the entry points takes a `Device`. PyTorch's CUDA memory calls refuse a CUDA device without an
index (`set_per_process_memory_fraction(0.25, torch.device("cuda"))` raises), so the index is
resolved here, once, and `Device.torch` always carries it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

_FORM = re.compile(r"(cpu|cuda)(?::(\d+))?")


@dataclass(frozen=True)
class Device:
    kind: str = "cpu"  # "cpu" or "cuda"
    index: int = 0  # among the CUDA devices this process sees (0 on the CPU)
    share: float = 0.0  # the fraction of the card's memory this process may take; 0: no cap

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "cuda") or self.index < 0 or (self.kind == "cpu" and self.index):
            raise ValueError(f"device {self.kind}:{self.index}: expected cpu, cuda or cuda:N")
        if not 0 <= self.share <= 1:
            raise ValueError(f"gpu share {self.share}: expected a fraction of one GPU, 0 to 1")
        object.__setattr__(self, "share", float(self.share))  # torch's memory cap takes a float only

    @classmethod
    def parse(cls, text: str, share: float = 0.0) -> Device:
        """`cpu`, `cuda` (the first visible GPU: cuda:0) or `cuda:N`; a one-line ValueError otherwise."""
        match = _FORM.fullmatch(str(text).strip())
        if not match or (match[1] == "cpu" and match[2] is not None):
            raise ValueError(f"--device {text}: expected cpu, cuda or cuda:N")
        return cls(match[1], int(match[2] or 0), share)

    @classmethod
    def of(cls, value: str | torch.device | Device) -> Device:
        """`value` as a Device: itself, or parsed (for the entry points that still take a string)."""
        return value if isinstance(value, Device) else cls.parse(str(value))

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def torch(self) -> torch.device:
        """The torch.device, with its index on CUDA."""
        return torch.device("cuda", self.index) if self.is_cuda else torch.device("cpu")

    def __str__(self) -> str:
        return f"cuda:{self.index}" if self.is_cuda else "cpu"
