"""Helpers shared by the command-line entry points."""
from __future__ import annotations

import sys
from typing import Callable

from search_spaces import SpecError
from trainers.data import DataError


class UsageError(ValueError):
    """A command-line value is invalid; the message names the flag, the value and what is allowed."""


def parse_size(text: str, flag: str = "--size") -> tuple[int, int]:
    """'64x128' -> (64, 128)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected HxW, e.g. 64x128") from None
    if h < 1 or w < 1:
        raise UsageError(f"{flag} {text!r}: height and width must be positive")
    return h, w


def parse_net_size(text: str, flag: str) -> tuple[int, int]:
    """An input size every network of the space takes (its deepest feature map is 1/32 of it)."""
    h, w = parse_size(text, flag)
    if h % 32 or w % 32:
        raise UsageError(f"{flag} {text}: height and width must be multiples of 32 (ratio 4 x 3 stride-2 stages)")
    return h, w


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a CLI main; user errors print one clear line and exit 2, never a traceback."""
    try:
        code = main(argv)
    except (SpecError, DataError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
