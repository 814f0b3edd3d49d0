"""Timing tools of the GPU smoke (benchmarks/gpu_smoke.py): the per-step compute span of a training
run from CUDA events, batch-1 latency eager against CUDA-graph replay, and the worker of the
1-vs-4-process comparison.

Honest-figure rules kept here: clocks are raised before anything is timed, each timing has a
time-based warm-up of at least WARM_S, GPU time comes from CUDA events (never host timers around
asynchronous launches), and fp32 is labelled as TF32 wherever TF32 is allowed.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import torch

WARM_S = 0.25  # time-based warm-up before every timing, after the clocks have risen (>= 200 ms)


def cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def fp32_label(device: str) -> str:
    """What "fp32" computes on `device`: convolutions and matrix products in TF32 where allowed."""
    if not cuda(device) or torch.cuda.get_device_capability(torch.device(device))[0] < 8:
        return "fp32"
    on = [n for n, flag in (("convs", torch.backends.cudnn.allow_tf32),
                            ("matmuls", torch.backends.cuda.matmul.allow_tf32)) if flag]
    return f"fp32 (TF32 {' + '.join(on)})" if on else "fp32 (TF32 off)"


def raise_clocks(device: str, seconds: float = 0.5) -> None:
    """Matrix products until `seconds` have passed, so that the SM clock is up before any timing."""
    if not cuda(device):
        return
    a = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(8):
            a @ a
        torch.cuda.synchronize(device)


class StepEvents:
    """CUDA events at each training step's first forward (S) and after its optimizer step (E), set by
    global hooks, so `trainers.train.fit` is timed unchanged. Per step: the compute span S_i -> E_i
    over the step period S_i -> S_{i+1}; what the period holds beside it is batch making and host waits."""

    def __init__(self, device: str):
        self.device, self.on = device, cuda(device)
        self.starts: list = []
        self.ends: list = []
        self._depth = 0
        self._open = False
        self._handles: list = []

    def _mark(self):
        if self.on:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def _pre(self, module, args) -> None:
        if self._depth == 0 and torch.is_grad_enabled() and not self._open:  # the step's first forward
            self.starts.append(self._mark())
            self._open = True
        self._depth += 1

    def _post(self, module, args, output) -> None:
        self._depth -= 1

    def _stepped(self, optimizer, args, kwargs) -> None:
        if self._open:
            self.ends.append(self._mark())
            self._open = False

    def __enter__(self) -> "StepEvents":
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handles = [register_module_forward_pre_hook(self._pre), register_module_forward_hook(self._post),
                         register_optimizer_step_post_hook(self._stepped)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def rows(self) -> list[dict]:
        """One row per step with a following step: period, compute span and its share (ms)."""
        if self.on:
            torch.cuda.synchronize(self.device)
            gap = lambda a, b: a.elapsed_time(b)  # noqa: E731  (ms)
        else:
            gap = lambda a, b: (b - a) * 1e3  # noqa: E731
        n = min(len(self.starts) - 1, len(self.ends))
        rows = []
        for i in range(n):
            period, span = gap(self.starts[i], self.starts[i + 1]), gap(self.starts[i], self.ends[i])
            rows.append({"step": i + 1, "period_ms": period, "compute_span_ms": span,
                         "compute_share": span / period if period > 0 else None,
                         "clock": "CUDA events" if self.on else "host timer (no CUDA)"})
        return rows


def _repeats(fn, device: str, reps: int) -> list[float]:
    """Per-call ms over `reps` timed groups; the group size makes each group about 10 ms."""
    end, n = time.perf_counter() + WARM_S, 0
    while time.perf_counter() < end or n < 1:  # time-based warm-up, each call waited for: a graph replay
        fn()  # is queued in microseconds, and an unsynchronised loop would queue seconds of GPU work
        if cuda(device):
            torch.cuda.synchronize(device)
        n += 1
    group = max(1, int(n / WARM_S * 0.01))
    times = []
    for _ in range(reps):
        if cuda(device):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(group):
                fn()
            b.record()
            torch.cuda.synchronize(device)
            times.append(a.elapsed_time(b) / group)
        else:
            t = time.perf_counter()
            for _ in range(group):
                fn()
            times.append((time.perf_counter() - t) * 1e3 / group)
    return times


def latency(model: torch.nn.Module, x: torch.Tensor, device: str, reps: int) -> dict:
    """Batch-1 forward ms: eager, and the same forward captured once as a CUDA graph and replayed."""
    model.eval()
    row: dict = {"math": fp32_label(device), "reps": reps}
    with torch.no_grad():
        eager = _repeats(lambda: model(x), device, reps)
        row.update(eager_ms=statistics.median(eager), eager_min_ms=min(eager))
        if not cuda(device):
            row["graph_ms"] = None  # CUDA graphs exist on CUDA only; not an error on the CPU
            return row
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # capture's rule: warm up on a side stream first
            for _ in range(3):
                model(x)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(x)
        replay = _repeats(graph.replay, device, reps)
    row.update(graph_ms=statistics.median(replay), graph_min_ms=min(replay),
               eager_over_graph=statistics.median(eager) / statistics.median(replay))
    return row


def worker(args: dict) -> None:
    """One process of the 1-vs-4 comparison: claim the share, warm up, say "ready", wait for the common
    start time on stdin, count training steps for `seconds`, print one JSON line."""
    from search_spaces import build_model, load_preset
    from trainers.device import Device
    from trainers.gpu_share import claim_share

    device, (h, w) = args["device"], args["size"]
    torch.set_num_threads(args["threads"])
    claim_share(Device.parse(device, args["share"]))
    spec = load_preset(args["preset"], h, w)
    model = build_model(spec).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(args["batch"], 3, h, w, device=device)
    y = torch.randint(0, spec.input.num_classes, (args["batch"], h, w), device=device)
    amp = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cuda(device))

    def step() -> None:
        with amp:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    raise_clocks(device)
    end = time.perf_counter() + WARM_S
    while time.perf_counter() < end:
        step()
    if cuda(device):
        torch.cuda.synchronize(device)
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    time.sleep(max(0.0, start_at - time.time()))
    started, steps = time.time(), 0
    while time.time() - started < args["seconds"]:
        step()
        steps += 1
        if cuda(device) and steps % 4 == 0:
            torch.cuda.synchronize(device)  # the queue stays short: steps counted are steps done
    if cuda(device):
        torch.cuda.synchronize(device)
    finished = time.time()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda(device) else None
    print(json.dumps({"steps": steps, "started_at": started, "finished_at": finished,
                      "steps_per_s": steps / (finished - started), "peak_mem_mb": peak}), flush=True)
