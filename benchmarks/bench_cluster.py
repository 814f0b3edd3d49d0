"""Search throughput on a Ray cluster without a shared disk: 1 vs 2 worker nodes of 1 CPU each, and
the bytes each node received from the others.

The cluster is on loopback (tests/ray_cluster.py): a head offering no CPUs, beside which the driver
runs, and worker nodes each in a mount namespace of its own where the driver's --out folder is an
empty tmpfs. The same search runs on 1 and on 2 worker nodes: same seed, no early stopping, and a
budget within TPE's random start-up trials, so both train the same nets. Trials per hour are taken
over the trial phase (the first trial's start to the last one's end, from the study).

Bytes received per node are the kernel's TCP counters (`ss -ti`, bytes_received) of every socket a
node's processes hold, sampled each second, counting only sockets whose peer is a process of another
node (or the driver): what would cross the network between machines. Beside them: the bytes of the
objects a node's trials needed, each once (the data set, and the DUpsampling W of each (ratio, N)
its trials used), and Ray's own per-node figure, the object-manager chunks received (of at most
5 MiB each), read from the raylet's debug state.
Needs root (mount namespaces) and Linux.

    python benchmarks/bench_cluster.py [--budget 12] [--epochs 2] [--size 32x64]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from benchmarks.bench_search import _trial_phase_seconds  # noqa: E402
from benchmarks.common import save  # noqa: E402
from nas.pareto import counted_trials  # noqa: E402
from nas.records import TrialKey, storage_url  # noqa: E402
from nas.services import fit_for, reconstruction_key  # noqa: E402
from ray_cluster import LoopbackCluster, namespaces_supported, ray_env  # noqa: E402
from search_spaces import ArchSpec  # noqa: E402
from trainers.data import load_data  # noqa: E402

SOCKET = re.compile(r"^\S+\s+\S+\s+(\S+)\s+(\S+)\s+users:\(\(\"[^\"]*\",pid=(\d+),")


class TrafficMeter:
    """Samples every established TCP socket's bytes_received with its owning process, each second."""

    def __init__(self, nodes: dict[str, object], driver_pid: int):
        self.nodes, self.driver_pid = nodes, driver_pid
        self.sockets: dict[tuple[str, str], tuple[int, int]] = {}  # (local, peer) -> (pid, bytes received)
        self.owner: dict[int, str] = {}  # pid -> node name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for name, node in self.nodes.items():
            for pid in node.pids():
                self.owner[pid] = name
        self.owner[self.driver_pid] = "head"  # the driver runs on the head's machine
        lines = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True, text=True).stdout.splitlines()
        for head, info in zip(lines, lines[1:] + [""]):  # a socket's line, then its indented details
            sock, got = SOCKET.match(head), re.search(r"bytes_received:(\d+)", info)
            if sock and got and info[:1].isspace():
                key = (sock[1], sock[2])
                self.sockets[key] = (int(sock[3]), max(int(got[1]), self.sockets.get(key, (0, 0))[1]))

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self._sample()

    def __enter__(self) -> "TrafficMeter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def received(self) -> dict[str, int]:
        """Bytes each node's processes received from processes of other nodes."""
        by_endpoint = {local: pid for (local, _), (pid, _) in self.sockets.items()}
        out = dict.fromkeys(self.nodes, 0)
        for (local, peer), (pid, n) in self.sockets.items():
            mine, theirs = self.owner.get(pid), self.owner.get(by_endpoint.get(peer, -1))
            if mine is not None and mine != theirs:
                out[mine] += n
        return out


def chunks_received(node) -> int:
    """The raylet's own count of object chunks received (its debug state, written every 10 s)."""
    states = sorted(node.temp.glob("session_*/logs/debug_state.txt"))
    found = re.search(r"num chunks received total: (\d+)", states[-1].read_text()) if states else None
    return int(found[1]) if found else -1


def objects_needed(trials: list, data) -> int:
    """The data set plus each distinct DUpsampling W these trials were handed (the driver's fits)."""
    specs = {}
    for t in trials:
        spec = ArchSpec.from_dict(t.user_attrs[TrialKey.SPEC])
        key = reconstruction_key(spec, data.info.ignore_index, seed=0)
        if key is not None:
            specs[key] = spec
    fits = [fit_for(spec, data, 0) for spec in specs.values()]
    return data.train.nbytes + data.val.nbytes + sum(x.element_size() * x.nelement() for fit in fits for x in fit)


def run(workers: int, args: argparse.Namespace, work: Path, data) -> list[dict]:
    out = work / f"out-{workers}"
    study = f"cluster-{workers}"
    with LoopbackCluster(out, work / f"ray-{workers}") as cluster:
        nodes = {"head": cluster.head}
        for _ in range(workers):
            node = cluster.add_worker(cpus=1)
            nodes[node.name] = node
        cmd = [sys.executable, "-m", "nas.search", "--address", cluster.address, "--budget", str(args.budget),
               "--epochs", str(args.epochs), "--size", args.size, "--no-validate", "--no-presets", "--no-early-stopping",
               "--seed", "0", "--out", str(out), "--study", study]
        started = time.time()
        with open(work / f"driver-{workers}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=ray_env(), stdout=log,
                                    stderr=subprocess.STDOUT)
            with TrafficMeter(nodes, proc.pid) as meter:
                if proc.wait() != 0:
                    raise SystemExit(f"search on {workers} worker node(s) failed:\n{(work / f'driver-{workers}.log').read_text()[-3000:]}")
        wall = time.time() - started
        views = {name: node.view(out) for name, node in nodes.items() if node is not cluster.head}
        time.sleep(11)  # one more debug-state dump of every raylet
        chunks = {name: chunks_received(node) for name, node in nodes.items()}
        received = meter.received()

    import optuna
    run_dir = out / study
    trials = counted_trials(optuna.load_study(study_name=study, storage=storage_url(run_dir)))
    phase = _trial_phase_seconds(run_dir)
    assert all(v == [] for v in views.values()), f"a worker node wrote into the run folder: {views}"
    rows = []
    for name in nodes:
        mine = [t for t in trials if t.user_attrs.get(TrialKey.NODE) == nodes[name].node_id]
        rows.append({"worker_nodes": workers, "node": name, "trials": len(trials), "trial_phase_s": phase,
                     "trials_per_hour": len(trials) / phase * 3600, "search_wall_s": wall, "trials_on_node": len(mine),
                     "bytes_received": received[name], "objects_needed_bytes": objects_needed(mine, data) if mine else 0,
                     "ray_chunks_received": chunks[name]})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=int, default=12, help="at most TPE's 12 random start-up trials, so both runs train the same nets")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--size", default="32x64")
    args = p.parse_args()
    why = namespaces_supported()
    if why:
        raise SystemExit(f"needs worker nodes in mount namespaces of their own: {why}")
    h, w = map(int, args.size.split("x"))
    data = load_data(None, h, w, seed=0)  # what the driver loads: the W fits are remade on it for the figures
    print(f"data set: {data.train.nbytes + data.val.nbytes:,} bytes at {args.size}")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        rows = run(1, args, Path(tmp), data) + run(2, args, Path(tmp), data)
    table = pd.DataFrame(rows)
    table["data_set_bytes"] = data.train.nbytes + data.val.nbytes
    save(table, "cluster")


if __name__ == "__main__":
    main()
