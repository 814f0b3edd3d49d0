"""Latency of one ONNX graph on this machine, the way the search measures it, and this machine's facts.

Batch 1 (the graph's own fixed input shape), ONNX Runtime with the providers and the intra-op
thread count asked for (inter-op 1, sequential, every graph optimisation), warm-up by time, then
the median and interquartile range of N timed runs (the quantiles of the search's own timing,
trainers/timing.py). Input and output stay bound on the provider's device (IO binding), so a run
is the network alone. Nothing here imports torch or the search's code: a board needs only this
package, NumPy, ONNX Runtime and Ray.
"""
from __future__ import annotations

import hashlib
import math
import os
import platform
import socket
import statistics
import time
import uuid
from dataclasses import asdict, dataclass

import numpy as np

from .graph import check_graph

# the providers whose sessions take their input and output on a CUDA device
_CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass(frozen=True)
class Request:
    """How to time a graph: ONNX Runtime's threads and providers (in order of preference), warm-up, runs."""

    threads: int = 1
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    warmup_s: float = 1.0
    runs: int = 30

    def __post_init__(self) -> None:
        if self.threads < 1 or self.runs < 2 or not self.warmup_s >= 0 or not self.providers:
            raise ValueError(f"{self}: threads >= 1, runs >= 2, warm-up >= 0 s and at least one provider")
        object.__setattr__(self, "providers", tuple(self.providers))


@dataclass(frozen=True)
class Measurement:
    """One graph timed on one machine: the figures, and where and when it ran."""

    median_ms: float
    iqr_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    runs: int
    warmup_runs: int
    threads: int
    providers: tuple[str, ...]  # the session's, the first the one that ran the graph
    host: str
    pid: int
    node: str  # the Ray node it ran on ("" outside Ray)
    started_at: float
    finished_at: float
    id: str  # unique per measurement: a graph measured twice has two

    def to_dict(self) -> dict:
        return {**asdict(self), "providers": list(self.providers)}


def _session(graph: bytes, request: Request):
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in request.providers if p not in available]
    if missing:
        raise RuntimeError(f"provider {', '.join(missing)}: not in this board's onnxruntime ({', '.join(available)})")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = request.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(graph, sess_options=opts, providers=list(request.providers))
    active = sess.get_providers()
    if not active or active[0] != request.providers[0]:  # a provider that failed to load falls back silently
        raise RuntimeError(f"provider {request.providers[0]}: did not load (the session runs on {', '.join(active)})")
    return sess


def _bound(sess, provider: str):
    """The session's IO binding, its input a fixed random image of the graph's input shape."""
    import onnxruntime as ort

    (image,), (logits, *_) = sess.get_inputs(), sess.get_outputs()
    if image.type != "tensor(float)" or not all(isinstance(d, int) and d > 0 for d in image.shape):
        raise RuntimeError(f"graph input {image.name}: expected a float tensor of fixed shape, got {image.type} {image.shape}")
    where = ("cuda", 0) if provider in _CUDA_PROVIDERS else ("cpu", 0)
    x = np.random.default_rng(0).random(image.shape, dtype=np.float32)
    binding = sess.io_binding()
    binding.bind_ortvalue_input(image.name, ort.OrtValue.ortvalue_from_numpy(x, *where))
    binding.bind_output(logits.name, *where)
    return binding


def measure(graph: bytes, request: Request = Request(), node: str = "") -> Measurement:
    """Time `graph` here: warm-up for `request.warmup_s` (at least one run), then `request.runs` timed runs."""
    check_graph(graph)
    started = time.time()
    sess = _session(graph, request)
    binding = _bound(sess, request.providers[0])
    warmup, until = 0, time.perf_counter() + request.warmup_s
    while warmup == 0 or time.perf_counter() < until:
        sess.run_with_iobinding(binding)
        warmup += 1
    times = []
    for _ in range(request.runs):
        t0 = time.perf_counter_ns()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the device has finished when this returns
        times.append((time.perf_counter_ns() - t0) / 1e6)
    q = statistics.quantiles(times, n=20)  # 5 % steps: q[1] = p10, q[4] = p25, q[14] = p75, q[17] = p90
    return Measurement(statistics.median(times), q[14] - q[4], q[1], q[17], min(times), len(times), warmup,
                       request.threads, tuple(sess.get_providers()), socket.gethostname(), os.getpid(), node,
                       started, time.time(), uuid.uuid4().hex)


class BoardMismatch(RuntimeError):
    """This board is not the one the search measured on so far (another CPU, core count, ONNX Runtime...)."""


def measure_on_node(graph: bytes, request: Request, expect: dict | None = None) -> Measurement:
    """`measure` in a Ray task, the measurement naming the node it ran on; with `expect` (facts), only
    on a board whose facts are those: BoardMismatch (one line) on another, before anything is timed."""
    import ray

    if expect:
        mine = facts()
        diffs = [f"{k}: {expect[k]} expected, {mine.get(k)} here" for k in expect if mine.get(k) != expect[k]]
        if diffs:
            raise BoardMismatch(f"another board joined as the target ({'; '.join(diffs)})")
    return measure(graph, request, ray.get_runtime_context().get_node_id())


def _cpu_model() -> str:
    """The CPU as the board names it: x86's model name, a Raspberry Pi's or Jetson's board model."""
    found = {}
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            key, _, value = line.partition(":")
            found.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    try:
        with open("/proc/device-tree/model", encoding="utf-8", errors="replace") as f:
            found.setdefault("device-tree", f.read().strip("\0 \n"))
    except OSError:
        pass
    for key in ("model name", "model", "device-tree", "hardware"):
        if found.get(key):
            return found[key]
    return platform.processor() or platform.machine()


def cores(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores this process may run on: its CPU affinity (taskset), capped by a cgroup CPU quota
    (a container's --cpus, in the cgroup v2 file `cpu_max`) where one is set."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open(cpu_max, encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def source_hash() -> str:
    """This package's version and the hash of its source: host and board must run the same."""
    from . import __version__

    digest = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(f for f in os.listdir(here) if f.endswith(".py")):
        with open(os.path.join(here, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read())
    return f"{__version__} ({digest.hexdigest()[:12]})"


def facts() -> dict:
    """What decides this machine's latencies, as a study records it: CPU, cores, ONNX Runtime and its
    providers, and this package's version."""
    import onnxruntime as ort

    return {"host": socket.gethostname(), "cpu": _cpu_model(), "cores": cores(), "lightseg_board": source_hash(),
            "machine": platform.machine(), "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "onnxruntime": ort.__version__, "numpy": np.__version__,
            "providers": list(ort.get_available_providers())}


def facts_on_node() -> dict:
    """`facts` in a Ray task, naming the node."""
    import ray

    return {**facts(), "node": ray.get_runtime_context().get_node_id()}
