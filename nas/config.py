"""A search's configuration, in parts by who reads them; each part refuses a bad value when it is made.

`TrialMeaning` is what decides what a trial's numbers mean (the resume check compares it),
`Resources` is what the executor asks Ray for, `RunOptions` is how this driver runs the study.
`SearchConfig` holds the three. A bad value raises `UsageError`, one line naming the flag, the
value and what is allowed, which the command line prints as it is.
"""
from __future__ import annotations

import dataclasses
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from search_spaces import ArchSpec
from trainers.data import SegData

from .cli import UsageError
from .pareto import Objective
from .protocols import DEFAULT as DEFAULT_PROTOCOL, PROTOCOLS, ladder_agreement
from .records import baseline_label, storage_url
from .trial import Constraints, TrialSettings
from .validate import DEFAULT_NOISE, Protocol


@dataclass(frozen=True)
class Baseline:
    """The user's own net (`--baseline`): a reference trial like a preset. With `within`, its costs
    at the deployment size are constraints too (nas.baseline measures them; the tighter limit wins)."""

    path: str  # the YAML, resolved
    spec: dict  # its ArchSpec as read (the study queues it at the study's input)
    within: bool = False
    explicit: Constraints = field(default_factory=Constraints)  # the --max-* flags' own limits

    @property
    def label(self) -> str:  # its trial's name, in place of a preset's
        return baseline_label(self.path)


@dataclass(frozen=True)
class TrialMeaning:
    """The settings a resumed study must keep: data, sizes, training, objectives, validation protocol."""

    objectives: tuple[Objective, ...]
    settings: TrialSettings
    data: str | None = None
    height: int = PROTOCOLS[DEFAULT_PROTOCOL].size[0]
    width: int = PROTOCOLS[DEFAULT_PROTOCOL].size[1]
    seed: int = 0
    early_stopping: bool = True
    validate: bool = True
    val_height: int = PROTOCOLS[DEFAULT_PROTOCOL].val_size[0]
    val_width: int = PROTOCOLS[DEFAULT_PROTOCOL].val_size[1]
    val_epochs: int = PROTOCOLS[DEFAULT_PROTOCOL].val_epochs
    val_seeds: int = 2
    baseline: Baseline | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.seed < 2**32:  # numpy's generators take no other seed
            raise UsageError(f"--seed {self.seed}: expected 0 to {2**32 - 1}")
        if self.settings.epochs < 1:
            raise UsageError(f"--epochs {self.settings.epochs}: must be at least 1")
        if self.val_epochs < 1:
            raise UsageError(f"--val-epochs {self.val_epochs}: must be at least 1")
        if self.val_seeds < 2:
            raise UsageError(f"--val-seeds {self.val_seeds}: at least 2, or the seed noise cannot be seen")

    @property
    def protocol(self) -> Protocol:
        """The validation protocol; its seeds are apart from the search's, so no run is reused."""
        seeds = tuple(self.seed + 1000 + i for i in range(self.val_seeds))
        return Protocol(self.val_height, self.val_width, self.val_epochs, seeds)

    @property
    def deploy_label(self) -> str:  # the input HxW every cost is measured at
        return "x".join(map(str, self.settings.deploy_size or (self.height, self.width)))

    def describe(self, data: SegData) -> dict[str, str]:
        """This meaning as the study records it (its `trial_meaning`), `data` being the loaded data set."""
        s, b = self.settings, self.baseline
        source = "streets (embedded)" if self.data in (None, "", "streets") else str(Path(self.data).resolve())
        # the baseline's costs are named, not given in figures: a resume re-measures its latency
        c = b.explicit if b is not None and b.within else s.constraints
        limits = [f"{k} <= {v:g}" for k, v in asdict(c).items() if v is not None]
        limits += ["the baseline's costs"] if b is not None and b.within else []
        described = {
            "data": f"{source} ({len(data.train)} train / {len(data.val)} val images, {data.info.num_classes} classes)",
            "size": f"{self.height}x{self.width}", "deploy size": self.deploy_label, "epochs": str(s.epochs),
            "early stopping": "on" if self.early_stopping else "off",
            "objectives": ",".join(o.name for o in self.objectives), "constraints": ", ".join(limits) or "none",
            "seed": str(self.seed),
            "training": f"batch {s.batch_size}, lr {s.lr:g}", "device": s.device,
            "latency": f"{s.latency_backend}, {s.threads} thread(s), median of {s.latency_runs} runs",
            "validation": f"{self.protocol.label()} ({', '.join(map(str, self.protocol.seeds))})" if self.validate else "off",
        }
        if b is not None:  # a key only where there is a baseline: studies without one resume as before
            described["baseline"] = f"{b.path} ({ArchSpec.from_dict(b.spec).tag()})"
        if s.latency_target is not None:  # likewise only with --latency-target (its board: nas.target.check_board)
            described["latency target"] = s.latency_target.describe(s.latency_runs)
        return described


@dataclass(frozen=True)
class Resources:
    """Where and with what the trials run, and where the study and the run folder's copy live."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    address: str | None = None  # an existing Ray cluster's
    storage: str | None = None  # the study database's URL; None: SQLite in the run folder
    artifacts_uri: str | None = None  # a shared folder or bucket that gets a copy of the run folder

    def __post_init__(self) -> None:
        if self.cpus_per_trial <= 0:
            raise UsageError(f"--cpus-per-trial {self.cpus_per_trial}: must be positive")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise UsageError(f"--max-concurrent {self.max_concurrent}: must be at least 1")
        if self.gpus_per_trial < 0:
            raise UsageError(f"--gpus-per-trial {self.gpus_per_trial}: must be >= 0")


@dataclass(frozen=True)
class RunOptions:
    """How this driver runs the study: its name and folder, budget, sampler, which nets get validated."""

    study: str = "default"
    out: str = "results"
    budget: int = 100
    sampler: str = "tpe"
    presets: bool = True
    pick: str = "knee"
    resume: bool = False
    force: bool = False
    quiet: bool = False
    noise: float = DEFAULT_NOISE
    val_max: int = 12
    protocol: str = PROTOCOLS[DEFAULT_PROTOCOL].label()  # the named protocol the sizes came from, or custom

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise UsageError(f"--budget {self.budget}: must be at least 1")
        if self.resume and self.force:
            raise UsageError("--resume and --force contradict each other; give one")
        if not 0 <= self.noise < 1:
            raise UsageError(f"--noise {self.noise}: an mIoU margin from 0 to below 1")
        if self.val_max < 0:
            raise UsageError(f"--val-max {self.val_max}: must be >= 0")


# config.yaml's keys in the order runs have always written them (a new field goes at the end)
_RECORD_ORDER = ("study", "out", "budget", "objectives", "settings", "data", "height", "width", "sampler", "seed",
                 "early_stopping", "presets", "cpus_per_trial", "gpus_per_trial", "max_concurrent", "address",
                 "storage", "artifacts_uri", "pick", "resume", "force", "quiet", "validate", "val_height",
                 "val_width", "val_epochs", "val_seeds", "noise", "val_max")


def _forward(part: str, name: str) -> property:
    return property(lambda self: getattr(getattr(self, part), name), doc=f"{part}.{name}")


@dataclass(frozen=True)
class SearchConfig:
    """A search's configuration: its three parts, and what derives from them (run folder, study URL, driver)."""

    meaning: TrialMeaning
    resources: Resources
    options: RunOptions

    def __post_init__(self) -> None:
        if self.settings.device == "cuda" and self.resources.gpus_per_trial <= 0:
            raise UsageError("--device cuda: needs --gpus-per-trial > 0, or Ray would not give the trials a GPU")
        names = [o.name for o in self.objectives]
        if self.options.pick != "knee" and self.options.pick not in names:
            raise UsageError(f"--pick {self.options.pick}: not among the objectives {','.join(names)}")

    def replace(self, **changes) -> SearchConfig:
        """A copy with fields changed by name, whichever part holds them."""
        parts = {}
        for f in dataclasses.fields(self):
            part = getattr(self, f.name)
            own = {k: changes.pop(k) for k in [g.name for g in dataclasses.fields(part)] if k in changes}
            parts[f.name] = dataclasses.replace(part, **own)
        if changes:
            raise TypeError(f"SearchConfig has no field {', '.join(changes)}")
        return SearchConfig(**parts)

    # the fields most call sites read, without naming their part
    objectives = _forward("meaning", "objectives")
    settings = _forward("meaning", "settings")
    protocol = _forward("meaning", "protocol")
    deploy_label = _forward("meaning", "deploy_label")
    study = _forward("options", "study")
    budget = _forward("options", "budget")

    @property
    def run_dir(self) -> Path:
        return Path(self.options.out) / self.options.study

    @property
    def storage_url(self) -> str:
        return storage_url(self.run_dir, self.resources.storage)

    @property
    def budget_owner(self) -> str | None:
        """Whose trials count against this driver's budget: its own on a database shared by several
        drivers; every trial on the run folder's private one, whatever path they ran under."""
        return None if self.resources.storage is None else self.owner

    @property
    def owner(self) -> str:
        """Names the driver of a trial: only one driver at a time holds this run folder's lock."""
        return f"{socket.gethostname()}:{self.run_dir.resolve()}"

    def trial_meaning(self, data: SegData) -> dict[str, str]:
        """The settings that decide what a trial's numbers mean; a resumed study must keep them."""
        return self.meaning.describe(data)

    def to_dict(self) -> dict:
        """The flat record config.yaml keeps (nas.export and the benchmarks read it back by key)."""
        fields = {**asdict(self.meaning), **asdict(self.resources), **asdict(self.options)}
        d = {k: fields.pop(k) for k in _RECORD_ORDER if k in fields}
        if fields.get("baseline") is None:  # recorded only where there is one: other records stay as they were
            fields.pop("baseline", None)
        d.update(fields)
        d["objectives"] = [o.name for o in self.objectives]
        d["deploy_size"] = self.deploy_label
        agreement = ladder_agreement(self.meaning.val_height, self.meaning.val_width, self.meaning.val_epochs)
        d["protocol_agreement"] = agreement.sentence() if agreement else "not measured by the resolution ladder"
        if not any(d["settings"]["faults"].values()):  # fault injection is for the tests: shown only when set
            del d["settings"]["faults"]
        if d["settings"].get("latency_target") is None:  # recorded only with --latency-target, as the baseline
            d["settings"].pop("latency_target", None)
        return d
