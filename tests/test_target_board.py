"""What a board installs is enough, and holds no torch (slow: it installs Ray into a fresh environment).

A fresh virtual environment gets `pip install ./board` with the host's Ray and ONNX Runtime; there,
`import torch` fails, and the board's code times a graph the search exported."""
from __future__ import annotations

import json
import subprocess

import pytest

from nas.target_ledger import export_graph

from board_venv import board_env  # noqa: F401 (the fixture)
from helpers import tiny_spec

pytestmark = pytest.mark.slow

TIME_IT = """
import json, sys
import lightseg_board
graph = open(sys.argv[1], "rb").read()
m = lightseg_board.measure(graph, lightseg_board.Request(threads=1, runs=5, warmup_s=0.1))
print(json.dumps({"median_ms": m.median_ms, "ops": sorted(set(lightseg_board.check_graph(graph))),
                  "facts": lightseg_board.facts()}))
"""


def test_the_board_package_alone_times_a_graph_without_torch(board_env, tmp_path):
    python = board_env / "python"
    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    graph = tmp_path / "net.onnx"
    graph.write_bytes(export_graph(tiny_spec(tvconv_from=2, decoder="erfnet", ratio=2)))
    done = subprocess.run([str(python), "-c", TIME_IT, str(graph)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)  # not the checkout: lightseg_board comes from the environment
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got["median_ms"] > 0 and "Conv" in got["ops"] and "CPUExecutionProvider" in got["facts"]["providers"]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"lightseg-nas-board", "ray", "onnxruntime", "numpy"} <= names
    assert not names & {"torch", "lightseg-nas", "optuna", "onnx"}, names
