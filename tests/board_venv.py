"""A virtual environment holding only what a board installs: `pip install ./board` with the search
host's Ray and ONNX Runtime versions (Ray refuses a node of another version), and no torch.

Made once per test session. pip needs its index for Ray's wheel; where it cannot reach one, the
fixture says why and the tests that need this environment skip.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "measuring-on-your-device.md"
ENV = "~/lightseg-board"  # the board's environment, as the docs name it


def doc_command(start: str) -> str:
    """The line of docs/measuring-on-your-device.md that starts with `start`, as the docs print it."""
    found = [line.strip() for line in DOC.read_text().splitlines() if line.strip().startswith(start)]
    assert len(found) == 1, f"{DOC.name}: {len(found)} lines start with {start!r}"
    return found[0]


def board_install_command(venv: Path) -> str:
    """The docs' install command (run from the folder holding a copy of board/), the board's
    environment at `venv` and this host's Ray and ONNX Runtime where the docs name the versions."""
    line = doc_command(f"{ENV}/bin/pip install ./board")
    for package in ("ray", "onnxruntime"):
        assert f'"{package}==' in line, f"{DOC.name}: the install command no longer pins {package}"
        line = re.sub(rf'"{package}==[^"]+"', f'"{package}=={version(package)}"', line)
    return line.replace(ENV, shlex.quote(str(venv)), 1)


def board_join_command(board_bin: Path, address: str, name: str) -> list[str]:
    """The docs' join command, run from `board_bin` to the head at `address` as the target `name`."""
    line = doc_command(f"{ENV}/bin/ray start --address HOST:6379")
    line = line.replace(f"{ENV}/bin", str(board_bin), 1).replace("HOST:6379", address).replace("pi5", name)
    return shlex.split(line)


@pytest.fixture(scope="session")
def board_env(tmp_path_factory) -> Path:
    """The board environment's bin folder (its python and ray); skips where it cannot be installed."""
    where = tmp_path_factory.mktemp("board")
    venv, board = where / "venv", where / "board"
    # a copy, as a board has: pip builds in the folder it installs from, and the checkout stays clean
    shutil.copytree(ROOT / "board", board, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run(board_install_command(venv), shell=True, cwd=where,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"cannot install the board package here (pip: {done.stderr.strip().splitlines()[-1:]})")
    return venv / "bin"
