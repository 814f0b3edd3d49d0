"""A Ray cluster of several nodes on one machine, for the multi-node tests and the cluster benchmark.

The head offers no CPUs, so nothing the search schedules can run there. Each worker node runs in a
mount namespace of its own in which one folder (the driver's --out) is covered by an empty tmpfs:
the node cannot see what the driver writes there, as on a machine that shares no disk with the
driver, and whatever it would write there lands in its tmpfs, where the tests look for it. Every
process of a node is found by its session (the head) or its mount namespace (a worker node) and
killed by PID, so nothing is left running and no other Ray instance on the machine is touched.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent  # `ray` of the same environment as the tests


def ray_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{BIN}:{os.environ['PATH']}", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def namespaces_supported() -> str | None:
    """None where worker nodes can be started as this module does, else why not (for a skip)."""
    if os.geteuid() != 0:
        return "a private mount namespace with a tmpfs needs root"
    if not shutil.which("unshare"):
        return "unshare (util-linux) is missing"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount a tmpfs in a new mount namespace: {probe.stderr.strip()}"


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


class Node:
    """One `ray start --block` and everything it starts."""

    def __init__(self, name: str, args: list[str], temp: Path, log: Path, isolated: bool):
        self.name, self.temp, self.log, self.isolated = name, temp, log, isolated
        with open(log, "w") as out:
            self.proc = subprocess.Popen(args, env=ray_env(), stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.ns = None
        self._wait_started()
        self.node_id = self._node_id()

    def _wait_started(self, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if self.isolated and self.ns is None:
                ns = _mount_ns(self.proc.pid)  # after `unshare`, before `ray start` spawns anything
                if ns is not None and ns != _mount_ns(os.getpid()):
                    self.ns = ns
            if "Ray runtime started" in self.log.read_text():
                return
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"{self.name} did not start in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def pids(self) -> list[int]:
        """The node's live processes: its session (daemons keep it; workers take process groups of
        their own) and, for a worker node, everything in its mount namespace."""
        out = []
        for pid in _all_pids():
            try:
                mine = os.getsid(pid) == self.proc.pid
            except OSError:
                continue
            if mine or (self.ns is not None and _mount_ns(pid) == self.ns):
                out.append(pid)
        return out

    def commands(self) -> list[str]:
        """The command lines (Ray's process titles for its workers) of the node's processes."""
        return [_cmdline(pid) for pid in self.pids()]

    def raylet_pid(self) -> int:
        for pid in self.pids():
            if "/raylet/raylet " in _cmdline(pid):
                return pid
        raise RuntimeError(f"{self.name}: no raylet running")

    def _node_id(self) -> str:
        found = re.search(r"--node_id=([0-9a-f]+)", _cmdline(self.raylet_pid()))
        assert found, f"{self.name}: the raylet's command line names no node id"
        return found.group(1)

    def view(self, path: Path) -> list[str]:
        """What this node's processes see in `path` (/proc/PID/root resolves in their mount namespace)."""
        return sorted(os.listdir(f"/proc/{self.raylet_pid()}/root{Path(path).resolve()}"))

    def kill(self) -> None:
        """SIGKILL every process of the node, again until none is left (a dying raylet may have
        been starting a worker)."""
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


class LoopbackCluster:
    """A head with no CPUs on 127.0.0.1 and worker nodes that cannot see `hidden`."""

    def __init__(self, hidden: Path, logs: Path):
        self.hidden, self.logs = Path(hidden).resolve(), Path(logs)
        self.hidden.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tag = f"/tmp/lsr-{os.getpid()}"  # Ray's socket paths must stay short
        self.workers: list[Node] = []
        self._count = 0
        self.head = Node("head", ["ray", "start", "--head", f"--port={self.port}", "--num-cpus=0", "--num-gpus=0",
                                  "--include-dashboard=false", f"--temp-dir={self.tag}-h", "--block"],
                         Path(f"{self.tag}-h"), self.logs / "head.log", isolated=False)

    def add_worker(self, cpus: int = 1) -> Node:
        self._count += 1
        name = f"w{self._count}"
        ray = (f"exec ray start --address={self.address} --num-cpus={cpus} --num-gpus=0 "
               f"--temp-dir={self.tag}-{name} --block")
        node = Node(name, ["unshare", "-m", "--propagation", "private", "sh", "-c",
                           f'mount -t tmpfs tmpfs "$0" && {ray}', str(self.hidden)],
                    Path(f"{self.tag}-{name}"), self.logs / f"{name}.log", isolated=True)
        self.workers.append(node)
        return node

    def close(self) -> None:
        for node in [*self.workers, self.head]:
            node.kill()
            shutil.rmtree(node.temp, ignore_errors=True)

    def __enter__(self) -> "LoopbackCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
