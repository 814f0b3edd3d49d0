"""One trial: measure the costs, check the constraints, train with per-epoch reports.

`evaluate_trial` is plain Python (no Ray), so it is tested directly; the search runs it inside
Ray Tune workers. Every outcome is a result dict with a `status`: complete, infeasible, failed
(or, when the scheduler stops it after a report, the driver records it as stopped).
"""
from __future__ import annotations

import math
import os
import signal
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from search_spaces import ArchSpec
from trainers.costs import measure_costs
from trainers.data import SegData
from trainers.train import TrainConfig, TrainingDiverged, fit


@dataclass(frozen=True)
class Constraints:
    max_latency_ms: float | None = None
    max_gmacs: float | None = None
    max_params: float | None = None
    max_mem_mb: float | None = None

    def violations(self, costs: dict) -> list[str]:
        checks = (("latency_ms", self.max_latency_ms), ("gmacs", self.max_gmacs),
                  ("params", self.max_params), ("peak_mem_mb", self.max_mem_mb))
        return [f"{key} {costs[key]:.4g} > {limit:g}" for key, limit in checks if limit is not None and costs[key] > limit]


@dataclass(frozen=True)
class FaultPlan:
    """Deliberate faults by trial number, for testing the search's fault handling."""

    raise_at: tuple[int, ...] = ()
    nan_at: tuple[int, ...] = ()
    oom_at: tuple[int, ...] = ()
    kill_worker_at: tuple[int, ...] = ()  # every attempt: the trial fails after its one retry
    kill_worker_once_at: tuple[int, ...] = ()  # first attempt only: the retry succeeds


@dataclass(frozen=True)
class TrialSettings:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 4e-3
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    latency_runs: int = 30
    latency_backend: str = "onnxruntime"  # the exported graph, as deployed; or "torch" (eager)
    constraints: Constraints = field(default_factory=Constraints)
    faults: FaultPlan = field(default_factory=FaultPlan)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrialSettings:
        d = dict(d)
        d["constraints"] = Constraints(**d["constraints"])
        d["faults"] = FaultPlan(**{k: tuple(v) for k, v in d["faults"].items()})
        return cls(**d)


def _inject(faults: FaultPlan, number: int, attempt: int) -> None:
    if number in faults.raise_at:
        raise RuntimeError(f"injected fault in trial {number}")
    if number in faults.oom_at:
        raise torch.OutOfMemoryError(f"injected out-of-memory in trial {number}")
    if number in faults.kill_worker_at or (number in faults.kill_worker_once_at and attempt == 1):
        os.kill(os.getpid(), signal.SIGKILL)


def evaluate_trial(spec: ArchSpec, data: SegData, settings: TrialSettings, number: int = -1, attempt: int = 1,
                   report: Callable[[dict], None] = lambda r: None, shared_dir: str | None = None) -> dict:
    """Run one trial to its end and return its final result; every report carries the costs.

    `shared_dir` is the search's run folder, where trials share what they would otherwise each
    recompute (DUpsampling's reconstruction matrix).

    Out of memory may be transient (a neighbour trial's peak on a shared GPU): it is retried once.
    """
    result = _attempt(spec, data, settings, number, attempt, report, shared_dir)
    if result["status"] == "failed" and result["reason"].startswith("out of memory") and attempt == 1:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        result = _attempt(spec, data, settings, number, attempt + 1, report, shared_dir)
    return result


def _attempt(spec: ArchSpec, data: SegData, settings: TrialSettings, number: int, attempt: int,
             report: Callable[[dict], None], shared_dir: str | None) -> dict:
    start = time.perf_counter()
    torch.set_num_threads(settings.threads)
    base: dict = {"number": number, "device": settings.device, "attempts": attempt}
    try:
        _inject(settings.faults, number, attempt)
        costs = measure_costs(spec, settings.device, runs=settings.latency_runs, threads=settings.threads,
                              backend=settings.latency_backend).to_dict()
        base.update(costs)
        violated = settings.constraints.violations(costs)
        if violated:
            return {**base, "status": "infeasible", "reason": "; ".join(violated), "epoch": 0,
                    "trial_seconds": time.perf_counter() - start}
        cfg = TrainConfig(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                          seed=settings.seed, device=settings.device, shared_dir=shared_dir)
        train_start = time.perf_counter()

        def on_epoch(rec) -> None:
            miou = rec.miou
            if number in settings.faults.nan_at or not math.isfinite(miou):
                raise TrainingDiverged(f"validation mIoU is {miou} after epoch {rec.epoch}")
            last = rec.epoch == settings.epochs
            report({**base, "epoch": rec.epoch, "miou": miou, "loss": rec.loss, "final": last,
                    "status": "complete" if last else "running",
                    "train_seconds": time.perf_counter() - train_start,
                    "trial_seconds": time.perf_counter() - start})

        result = fit(spec, data, cfg, on_epoch=on_epoch)
        return {**base, "status": "complete", "final": True, "epoch": len(result.history), "miou": result.miou,
                "train_seconds": result.train_seconds + result.eval_seconds, "trial_seconds": time.perf_counter() - start}
    except Exception as exc:  # a bad trial is a failed row, never a crashed search
        kind = "out of memory" if isinstance(exc, torch.OutOfMemoryError) else type(exc).__name__
        return {**base, "status": "failed", "reason": f"{kind}: {exc}", "epoch": 0,
                "traceback": traceback.format_exc(limit=5), "trial_seconds": time.perf_counter() - start}
