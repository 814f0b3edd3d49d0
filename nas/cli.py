"""Helpers shared by the command-line entry points."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Callable

import torch

from search_spaces import SpecError
from trainers.data import DataError
from trainers.device import Device


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


def require_at_least(value: int, flag: str, low: int) -> int:
    if value < low:
        raise UsageError(f"{flag} {value}: must be at least {low}")
    return value


def require_positive(value: float, flag: str) -> float:
    """A rate or scale: finite and above 0 (argparse's float also takes 'nan' and 'inf')."""
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} {value:g}: must be a positive number")
    return value


def parse_device(text: str) -> str:
    """`--device`: cpu, cuda or cuda:N, checked against this machine before any work starts."""
    try:
        device = Device.parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not device.is_cuda:
        return str(device)
    if not torch.backends.cuda.is_built():
        raise UsageError(f"--device {text}: this torch build has no CUDA (cpu only); use --device cpu")
    count = torch.cuda.device_count()
    if count == 0:
        raise UsageError(f"--device {text}: no CUDA GPU is visible on this machine; use --device cpu")
    if device.index >= count:
        raise UsageError(f"--device {text}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return str(device)


def _refuse_unwritable_folder(folder: Path, flag: str, given: Path) -> None:
    """`folder` will hold `given` (itself or a file in it): every part of it that exists must be a
    writable folder, so that the command can refuse before it writes anything."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {given}: {'it' if existing == given else existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {given}: cannot write in {existing} (permission denied)")


def check_out_folder(path: str | Path, flag: str = "--out") -> Path:
    """An output folder the command may create later: refused now if it could not be."""
    path = Path(path)
    _refuse_unwritable_folder(path, flag, path)
    return path


def check_out_file(path: str | Path, flag: str) -> Path:
    """An output file: its folder must exist and be writable, and it must not be a folder itself."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise UsageError(f"{flag} {path}: folder {path.parent} does not exist")
    _refuse_unwritable_folder(path.parent, flag, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: the file is read-only")
    return path


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
