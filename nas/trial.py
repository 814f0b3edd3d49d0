"""One trial: measure the costs (at the deployment size), check the constraints, train with per-epoch reports.

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
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch

from search_spaces import ArchSpec
from trainers.costs import measure_costs
from trainers.data import SegData
from trainers.device import Device
from trainers.gpu_share import claim_share, is_fatal_cuda_error, release
from trainers.train import TrainConfig, TrainingDiverged, fit

from .cli import UsageError
from .records import Status
from .target import LatencyTarget


# cost key -> the Constraints field (and --max-* flag) that limits it
LIMITS = {"latency_ms": "max_latency_ms", "gmacs": "max_gmacs", "params": "max_params", "peak_mem_mb": "max_mem_mb"}


@dataclass(frozen=True)
class Constraints:
    max_latency_ms: float | None = None
    max_gmacs: float | None = None
    max_params: float | None = None
    max_mem_mb: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value <= 0:
                raise UsageError(f"--{f.name.replace('_', '-')} {value}: a constraint must be positive")

    def violations(self, costs: dict) -> list[str]:
        checks = ((key, getattr(self, name)) for key, name in LIMITS.items())
        return [f"{key} {costs[key]:.4g} > {limit:g}" for key, limit in checks if limit is not None and costs[key] > limit]


@dataclass(frozen=True)
class FaultPlan:
    """Deliberate faults by trial number, for testing the search's fault handling."""

    raise_at: tuple[int, ...] = ()
    nan_at: tuple[int, ...] = ()
    oom_at: tuple[int, ...] = ()
    kill_worker_at: tuple[int, ...] = ()  # every attempt: the trial fails after its one retry
    kill_worker_once_at: tuple[int, ...] = ()  # first attempt only: the retry succeeds
    cuda_error_at: tuple[int, ...] = ()  # a sticky CUDA error, every attempt
    cuda_error_once_at: tuple[int, ...] = ()  # a sticky CUDA error on the first attempt only


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
    precision: str = "auto"  # training autocast (trainers.train.PRECISIONS)
    gpu_share: float = 0.0  # this trial's fraction of one GPU: its cap on the card's memory
    # (H, W) the costs are measured at; None: the size trained at. Costs at a small training size
    # would be dominated by per-layer overhead, not by what the deployed input costs.
    deploy_size: tuple[int, int] | None = None
    constraints: Constraints = field(default_factory=Constraints)
    faults: FaultPlan = field(default_factory=FaultPlan)
    latency_target: LatencyTarget | None = None  # --latency-target: the board every latency is measured on

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrialSettings:
        d = dict(d)
        d["constraints"] = Constraints(**d["constraints"])
        d["faults"] = FaultPlan(**{k: tuple(v) for k, v in d["faults"].items()})
        if d.get("deploy_size") is not None:
            d["deploy_size"] = tuple(d["deploy_size"])
        if d.get("latency_target") is not None:
            d["latency_target"] = LatencyTarget.from_dict(d["latency_target"])
        return cls(**d)

    def target(self) -> Device:
        """The device a trial of these settings runs on, with its share of the card (ValueError for nonsense)."""
        return Device.parse(self.device, self.gpu_share)

    def train_config(self, epochs: int, seed: int) -> TrainConfig:
        """How a trial (or a validation training) of these settings trains."""
        return TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr, seed=seed, device=self.device,
                           precision=self.precision)

    def deployed(self, spec: ArchSpec) -> ArchSpec:
        """The network whose costs are reported: `spec` built at the deployment size (TVConv's maps too)."""
        if self.deploy_size is None:
            return spec
        h, w = self.deploy_size
        return spec.with_input(height=h, width=w)


def _inject(faults: FaultPlan, number: int, attempt: int) -> None:
    if number in faults.raise_at:
        raise RuntimeError(f"injected fault in trial {number}")
    if number in faults.oom_at:
        raise torch.OutOfMemoryError(f"injected out-of-memory in trial {number}")
    if number in faults.kill_worker_at or (number in faults.kill_worker_once_at and attempt == 1):
        os.kill(os.getpid(), signal.SIGKILL)
    if number in faults.cuda_error_at or (number in faults.cuda_error_once_at and attempt == 1):
        raise RuntimeError(f"CUDA error: an illegal memory access was encountered (injected in trial {number})")


def evaluate_trial(spec: ArchSpec, data: SegData, settings: TrialSettings, number: int = -1, attempt: int = 1,
                   report: Callable[[dict], None] = lambda r: None, reconstruction=None,
                   retry_of: int | None = None, reference: bool = False, board: Callable | None = None) -> dict:
    """Run one trial to its end and return its final result; every report carries the costs.

    `reconstruction` is DUpsampling's (basis, mean) when the driver fitted it (once per search);
    otherwise the trial fits its own. `retry_of` names the trial this one repeats. A `reference`
    trial (a preset, the --baseline net) that breaks a constraint is trained all the same, as the
    yardstick the user asked about, and still ends infeasible (never a finished result of the search).

    Out of memory may be transient (a neighbour trial's peak on a shared GPU), so a first one is
    `deferred`: the driver runs the trial again later, beside other neighbours, not at once beside
    the same ones. A sticky CUDA error is `fatal`: this worker's CUDA context is unusable, so the
    worker must end and the trial run again in a fresh one.

    `board` (nas.target_ledger.TargetClient, with --latency-target) gives the net's latency on the
    board: it waits while the board is gone or busy, and its figure decides the constraints.
    """
    try:
        result = _attempt(spec, data, settings, number if retry_of is None else retry_of, attempt, report, reconstruction,
                          reference, board)
    finally:
        release(settings.device)  # a reused worker starts its next trial with the cache empty
    result.update(number=number, finished_at=time.time())
    if result["status"] == Status.FAILED and result["reason"].startswith("out of memory") and retry_of is None:
        result["status"] = Status.DEFERRED
    return result


def _attempt(spec: ArchSpec, data: SegData, settings: TrialSettings, number: int, attempt: int,
             report: Callable[[dict], None], reconstruction, reference: bool = False, board: Callable | None = None) -> dict:
    start = time.perf_counter()
    torch.set_num_threads(settings.threads)
    base: dict = {"number": number, "device": settings.device, "attempts": attempt, "started_at": time.time()}
    try:
        device = settings.target()
        if device.is_cuda and not torch.cuda.is_available():
            raise RuntimeError(f"device {settings.device}: this worker has no usable CUDA device "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        claim_share(device)  # here, so that a refusal is this trial's failure with its reason, not a dead worker
        _inject(settings.faults, number, attempt)
        costs = measure_costs(settings.deployed(spec), device, runs=settings.latency_runs,
                              threads=settings.threads, backend=settings.latency_backend).to_dict()
        if board is not None:  # the board's latency counts; the search host's stays beside it
            costs.update(board(settings.deployed(spec)).costs(costs))
        base.update(costs, device=settings.device)  # the device as the settings name it ("cuda", not "cuda:0")
        violated = settings.constraints.violations(costs)
        if violated and not reference:
            return {**base, "status": Status.INFEASIBLE, "reason": "; ".join(violated), "epoch": 0,
                    "trial_seconds": time.perf_counter() - start}
        # a reference that breaks a constraint trains, but ends infeasible: never on the front
        done, broken = (Status.INFEASIBLE, {"reason": "; ".join(violated)}) if violated else (Status.COMPLETE, {})
        cfg = settings.train_config(settings.epochs, settings.seed)
        train_start = time.perf_counter()

        def on_epoch(rec) -> None:
            miou = rec.miou
            if number in settings.faults.nan_at or not math.isfinite(miou):
                raise TrainingDiverged(f"validation mIoU is {miou} after epoch {rec.epoch}")
            last = rec.epoch == settings.epochs
            report({**base, **broken, "epoch": rec.epoch, "miou": miou, "loss": rec.loss, "final": last,
                    "status": done if last else Status.RUNNING,
                    "train_seconds": time.perf_counter() - train_start,
                    "trial_seconds": time.perf_counter() - start, "finished_at": time.time()})

        result = fit(spec, data, cfg, on_epoch=on_epoch, reconstruction=reconstruction)
        return {**base, **broken, "status": done, "final": True, "epoch": len(result.history), "miou": result.miou,
                "train_seconds": result.train_seconds + result.eval_seconds, "trial_seconds": time.perf_counter() - start,
                "peak_train_mem_mb": result.peak_train_mem_mb, "precision": result.precision,
                "skipped_steps": result.skipped_steps}
    except Exception as exc:  # a bad trial is a failed row, never a crashed search
        kind = "out of memory" if isinstance(exc, torch.OutOfMemoryError) else type(exc).__name__
        return {**base, "status": Status.FAILED, "reason": f"{kind}: {exc}", "epoch": 0, "fatal": is_fatal_cuda_error(exc),
                "traceback": traceback.format_exc(limit=5), "trial_seconds": time.perf_counter() - start}
