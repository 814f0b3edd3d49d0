"""A virtual environment holding only what a board installs: `pip install ./board` with the search
host's Ray and ONNX Runtime versions (Ray refuses a node of another version), and no torch.

Made once per test session. pip needs its index for Ray's wheel; where it cannot reach one, the
fixture says why and the tests that need this environment skip.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def board_install_command(python: Path, board: Path) -> list[str]:
    """What docs/measuring-on-your-device.md has a board run (`board` a copy of board/), with this host's
    versions pinned."""
    return [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(board),
            f"ray=={version('ray')}", f"onnxruntime=={version('onnxruntime')}"]


@pytest.fixture(scope="session")
def board_env(tmp_path_factory) -> Path:
    """The board environment's bin folder (its python and ray); skips where it cannot be installed."""
    where = tmp_path_factory.mktemp("board")
    venv, board = where / "venv", where / "board"
    # a copy, as a board has: pip builds in the folder it installs from, and the checkout stays clean
    shutil.copytree(ROOT / "board", board, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    done = subprocess.run(board_install_command(python, board), capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"cannot install the board package here (pip: {done.stderr.strip().splitlines()[-1:]})")
    return venv / "bin"
