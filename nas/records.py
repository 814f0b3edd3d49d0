"""What a study stores: the names of its attributes, a trial's status, a trial's recorded outcome.

This is a storage format. `--resume` and the reports read studies written by earlier runs, so
every string here must stay byte-identical; add keys, never rename them. No other module spells
an attribute key (tests/test_records.py greps for them). The schema is described in
docs/architecture.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class Status(str, Enum):
    """How a trial (or a validation training) ended. A str, so it is stored as its plain value."""
    COMPLETE = "complete"
    RUNNING = "running"  # an intermediate report; a trial stopped after one is STOPPED
    STOPPED = "stopped"  # stopped early by successive halving
    INFEASIBLE = "infeasible"  # broke a constraint before training
    FAILED = "failed"
    DEFERRED = "deferred"  # a first out of memory: run again after the rest of the budget

    def __str__(self) -> str:
        return self.value


# the statuses that use up the budget
COUNTED = (Status.COMPLETE, Status.STOPPED, Status.INFEASIBLE, Status.FAILED)


class TrialKey:
    """Per-trial user attributes."""
    SPEC = "spec"  # the ArchSpec as a dict: what rebuilds the net
    PRESET = "preset"  # the seed network's name, for a preset trial; baseline_label() for the --baseline net
    OWNER = "owner"  # the driver that ran it (SearchConfig.budget_owner)
    STATUS = "status"
    EPOCHS = "epochs"  # epochs trained (the result's "epoch")
    ATTEMPTS = "attempts"
    INTERRUPTED = "interrupted"  # a FAIL that is not a failure: queued again
    RETRY_OF = "retry_of"  # the deferred trial this one repeats
    PRIOR_ATTEMPTS = "prior_attempts"
    NODE_LOSSES = "node_losses"
    NODE = "node"
    MIOU = "miou"  # the search-protocol mIoU; each cost is stored under its Objective.key
    GMACS = "gmacs"
    # --latency-target: latency_ms is the board's; the search host's beside it, and which measurement it was
    LATENCY_MS_HOST = "latency_ms_host"
    LATENCY_IQR_MS_HOST = "latency_iqr_ms_host"
    LATENCY_DEVICE = "latency_device"  # DEVICE_PREFIX and the board's name (also its Ray resource)
    TARGET_GRAPH = "target_graph"  # the graph's key: its measurement is StudyKey.MEASUREMENT_PREFIX + this
    TARGET_MEASUREMENT = "target_measurement"  # the measurement's id
    DEVICE_PREFIX = "target:"  # a latency_device value (and the board's Ray resource): "target:" + its name


class StudyKey:
    """Study-wide user attributes."""
    TRIAL_MEANING = "trial_meaning"  # what the resume check compares
    HYPERVOLUME_SCALES = "hypervolume_scales"  # the fixed hypervolume reference
    TARGET_BOARD = "target_board"  # --latency-target: the board's facts (CPU, cores, ONNX Runtime, providers)
    MEASUREMENT_PREFIX = "target:"  # one graph's measurement on the board: "target:" + the graph's key


STUDY_DB = "study.db"  # the run folder's own database, where no --storage names another


def storage_url(run_dir: str | Path, storage: str | None = None) -> str:
    """The study's SQLAlchemy URL: `storage`, or the SQLite file in the run folder."""
    return storage or f"sqlite:///{(Path(run_dir) / STUDY_DB).resolve()}"


def baseline_label(path: str | Path) -> str:
    """The --baseline trial's `preset` value: it makes the trial a reference like a preset, and
    finds it again on --resume, so it is stored: "baseline:" and the YAML's file stem."""
    return f"baseline:{Path(path).stem}"


# What a trial queued again keeps of the original: which preset it is, and whose retry.
CARRIED = (TrialKey.PRESET, TrialKey.RETRY_OF, TrialKey.PRIOR_ATTEMPTS)

# The fields of a trial's final result kept as its attributes ("epoch" is stored as "epochs").
RECORDED = ("miou", "gmacs", "latency_ms", "latency_iqr_ms", "peak_mem_mb", "params", "params_deployed",
            "epoch", "train_seconds", "trial_seconds", "device", "reason", "attempts", "peak_train_mem_mb",
            "precision", "skipped_steps", "started_at", "finished_at", TrialKey.NODE,
            TrialKey.LATENCY_MS_HOST, TrialKey.LATENCY_IQR_MS_HOST, TrialKey.LATENCY_DEVICE, TrialKey.TARGET_GRAPH,
            TrialKey.TARGET_MEASUREMENT)

# The columns trials.csv adds after the latency where a run measured on a --latency-target board.
TARGET_COLUMNS = (TrialKey.LATENCY_DEVICE, TrialKey.LATENCY_MS_HOST, TrialKey.LATENCY_IQR_MS_HOST)


# The trial attributes trials.csv shows, in its column order.
TABLE_ATTRS = ("miou", "gmacs", "latency_ms", "latency_iqr_ms", "peak_mem_mb", "params", "params_deployed",
               TrialKey.EPOCHS, TrialKey.ATTEMPTS, TrialKey.RETRY_OF, "train_seconds", "trial_seconds",
               "peak_train_mem_mb", "device", "reason")


def validated_key(number: int, seed: int) -> str:
    """The study attribute of trial `number`'s validation training with `seed`."""
    return f"validated:{number}:{seed}"


def is_validated_key_of(key: str, number: int) -> bool:
    return key.startswith(f"validated:{number}:")


def isolated_key(number: int) -> str:
    """The study attribute of trial `number`'s latency timed with nothing else running."""
    return f"isolated:{number}"


def target_key(graph: str) -> str:
    """The study attribute of one graph's measurement on the --latency-target board (by its content key)."""
    return f"{StudyKey.MEASUREMENT_PREFIX}{graph}"


def is_target_key(key: str) -> bool:
    return key.startswith(StudyKey.MEASUREMENT_PREFIX)


WORKER_DIED = "worker process died, or its CUDA context failed, twice (retried once)"


@dataclass(frozen=True)
class TrialOutcome:
    """A trial's end as the driver records it: its status, and the attributes to store."""
    status: Status
    attrs: dict = field(default_factory=dict)

    @classmethod
    def from_result(cls, result: dict | None, error: bool) -> "TrialOutcome":
        """From the last result Ray Tune reported (None when the worker died before one)."""
        result = dict(result or {})
        status = Status(result.get("status", Status.FAILED))
        if error:
            status, result["reason"] = Status.FAILED, WORKER_DIED
        elif status == Status.RUNNING:
            status = Status.STOPPED  # the scheduler stopped it after an intermediate report
        attrs = {TrialKey.EPOCHS if k == "epoch" else k: result[k] for k in RECORDED if k in result}
        return cls(status, {**attrs, TrialKey.STATUS: status.value})

    def values(self, objectives) -> list[float]:
        return [float(self.attrs[o.key]) for o in objectives]
