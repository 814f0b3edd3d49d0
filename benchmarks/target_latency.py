"""Honesty check of --latency-target: does a board node time a graph as ONNX Runtime does in process,
and how far does a throttled board rank the nets like an unthrottled one?

On this machine: a Ray head (no CPUs) and a "board" node on loopback that joined as the docs say
(`ray start --num-cpus 0 --resources '{"target:bench": 1}'`), pinned with `taskset` to one core, ONNX
Runtime at 1 thread. `--nets` nets sampled from the space (fixed seed) are exported as the search
exports them (nas.target_ledger.export_graph) and each is timed three ways with the same code and
settings (lightseg_board.measure: warm-up by time, median and IQR of `--runs` runs):

- in process: here, pinned to the same core;
- on the board: the Ray task the search sends (lightseg_board.measure_on_node, resource target:bench);
- on a throttled board: the board node started again on that core beside a busy-loop process pinned
  to it too (the core shared, about half its time).

Reports per net both medians, their IQRs, the ratio board / in process and whether the two agree
within their spread (|difference| <= the sum of the IQRs); over the nets, Kendall tau of board vs
in process and of the throttled board vs the board, and the median ratios. Run alone (timings).

    python benchmarks/target_latency.py [--nets 20] [--size 128x256] [--runs 30] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from scipy.stats import kendalltau

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import lightseg_board  # noqa: E402
from benchmarks.common import sample_specs, save  # noqa: E402
from nas.target_ledger import export_graph  # noqa: E402
from ray_cluster import Node, free_port  # noqa: E402
from search_spaces import InputSpec, build_model  # noqa: E402
from search_spaces.space import SearchSpace  # noqa: E402
from trainers.costs import count_gmacs  # noqa: E402

RESOURCE = "target:bench"
CLASSES = 8  # the embedded street scenes'
BUSY = "while True: pass"


def _size(text: str) -> tuple[int, int]:
    h, w = map(int, text.lower().split("x"))
    return h, w


class Loopback:
    """A head with no CPUs and, in turn, board nodes pinned to `core`; every process killed at the end."""

    def __init__(self, core: int, logs: Path):
        self.core, self.logs, self.tag = core, logs, f"/tmp/ltb-{os.getpid()}"
        logs.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.nodes: list[Node] = []
        self.nodes.append(Node("head", ["ray", "start", "--head", f"--port={port}", "--num-cpus=0", "--num-gpus=0",
                                        "--include-dashboard=false", f"--temp-dir={self.tag}-h", "--block"],
                               Path(f"{self.tag}-h"), logs / "head.log", isolated=False))

    def board(self) -> Node:
        name = f"board{len(self.nodes)}"
        args = ["taskset", "-c", str(self.core), "ray", "start", f"--address={self.address}", "--num-cpus=0",
                "--num-gpus=0", "--resources", json.dumps({RESOURCE: 1}), f"--temp-dir={self.tag}-{name}", "--block"]
        self.nodes.append(Node(name, args, Path(f"{self.tag}-{name}"), self.logs / f"{name}.log", isolated=False))
        return self.nodes[-1]

    def close(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
            shutil.rmtree(node.temp, ignore_errors=True)


def on_board(graphs: list[bytes], request: lightseg_board.Request) -> list[lightseg_board.Measurement]:
    import ray

    task = ray.remote(lightseg_board.measure_on_node).options(num_cpus=0, resources={RESOURCE: 1})
    return [ray.get(task.remote(g, request)) for g in graphs]  # one at a time, as the search's board


def in_process(graphs: list[bytes], request: lightseg_board.Request, core: int) -> list[lightseg_board.Measurement]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})  # the board's core: the same machine time, only not through Ray
    try:
        return [lightseg_board.measure(g, request) for g in graphs]
    finally:
        os.sched_setaffinity(0, before)


def _tau(a, b) -> float:
    return float(kendalltau(a, b).statistic)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", type=int, default=20)
    p.add_argument("--size", default="128x256", help="input HxW of every net (the deployment size timed)")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="4 nets at 64x128, 10 runs, 0.2 s warm-up: a smoke run")
    args = p.parse_args()
    if args.quick:
        args.nets, args.size, args.runs, args.warmup_s = 4, "64x128", 10, 0.2
    h, w = _size(args.size)
    specs = sample_specs(SearchSpace(InputSpec(height=h, width=w, in_channels=3, num_classes=CLASSES)), args.nets,
                         args.seed)
    graphs = [export_graph(s) for s in specs]
    gmacs = [count_gmacs(build_model(s), s) for s in specs]
    request = lightseg_board.Request(threads=1, runs=args.runs, warmup_s=args.warmup_s)
    core = max(os.sched_getaffinity(0))
    print(f"{len(specs)} nets at {args.size}; board pinned to core {core}, ONNX Runtime 1 thread, "
          f"warm-up {args.warmup_s:g} s, median of {args.runs} runs", flush=True)

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # as the nodes run (tests/ray_cluster.py)
    logs = Path(tempfile.mkdtemp(prefix="target-latency-"))
    cluster, busy = Loopback(core, logs), None
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        board = cluster.board()
        local = in_process(graphs, request, core)
        remote = on_board(graphs, request)
        board.kill()
        busy = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", BUSY])
        slowed = cluster.board()
        time.sleep(2)  # the busy loop has its share of the core
        throttled = on_board(graphs, request)
        assert {m.node for m in remote} == {board.node_id} and {m.node for m in throttled} == {slowed.node_id}
    finally:
        if busy is not None:
            busy.kill()
        ray.shutdown()
        cluster.close()
    shutil.rmtree(logs, ignore_errors=True)  # kept when something failed: the nodes' logs say why

    rows = []
    for i, (spec, l, r, t) in enumerate(zip(specs, local, remote, throttled)):
        rows.append({"net": i, "tag": spec.tag(), "gmacs": gmacs[i], "in_process_ms": l.median_ms,
                     "in_process_iqr_ms": l.iqr_ms, "board_ms": r.median_ms, "board_iqr_ms": r.iqr_ms,
                     "ratio": r.median_ms / l.median_ms,
                     "agree": abs(r.median_ms - l.median_ms) <= l.iqr_ms + r.iqr_ms,
                     "throttled_ms": t.median_ms, "throttled_iqr_ms": t.iqr_ms,
                     "throttled_ratio": t.median_ms / r.median_ms})
    table = pd.DataFrame(rows)
    save(table, "target_latency")
    summary = pd.DataFrame([
        {"comparison": "board vs in process", "kendall_tau": _tau(table.board_ms, table.in_process_ms),
         "median_ratio": float(table.ratio.median()), "agree_within_spread": f"{int(table.agree.sum())}/{len(table)}"},
        {"comparison": "throttled board vs board", "kendall_tau": _tau(table.throttled_ms, table.board_ms),
         "median_ratio": float(table.throttled_ratio.median()), "agree_within_spread": ""},
        {"comparison": "GMACs vs board", "kendall_tau": _tau(table.gmacs, table.board_ms), "median_ratio": float("nan"),
         "agree_within_spread": ""},
    ])
    print()
    save(summary, "target_latency_summary")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"commit {commit.strip() or 'unknown'}; {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
