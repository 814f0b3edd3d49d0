"""The block registries: plain dicts filled by decorators, keyed by the space's choice names."""
from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")

CORES: dict[str, type] = {}
DOWNSAMPLERS: dict[str, type] = {}
DECODERS: dict[str, type] = {}


def _register(table: dict[str, type], name: str) -> Callable[[T], T]:
    def add(cls: T) -> T:
        if name in table:
            raise KeyError(f"block {name!r} registered twice")
        table[name] = cls
        return cls

    return add


def register_core(name: str) -> Callable[[T], T]:
    return _register(CORES, name)


def register_downsampler(name: str) -> Callable[[T], T]:
    return _register(DOWNSAMPLERS, name)


def register_decoder(name: str) -> Callable[[T], T]:
    return _register(DECODERS, name)
