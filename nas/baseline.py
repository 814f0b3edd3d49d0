"""`--baseline PATH.yaml`: the user's own net as a reference trial, and with `--within-baseline` its
costs as the search's constraints ("beat my net at no more than its cost").

The baseline is queued first and trained, validated and reported like a preset (`nas.study`,
`nas.validate`). Its costs are measured where the trials measure theirs, at the deployment size, for
the objectives' costs only; a `--max-*` flag given as well keeps the tighter of the two limits.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from search_spaces import ArchSpec, SpecError
from search_spaces.space import SearchSpace

from .cli import UsageError
from .config import Baseline, SearchConfig
from .pareto import Objective
from .trial import LIMITS, Constraints, TrialSettings


def load_baseline(path: str, within: bool, explicit: Constraints, height: int, width: int) -> Baseline:
    """The --baseline YAML as a `Baseline`; one line naming the file and its problem otherwise."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--baseline {path}: no such file (give an ArchSpec YAML, e.g. one nas.export wrote)")
    try:
        spec = ArchSpec.from_yaml(file)
    except SpecError as exc:  # the file is named once, first
        problem = str(exc).splitlines()[0].removeprefix(f"{file}: ")
        raise UsageError(f"--baseline {path}: not an ArchSpec YAML ({problem})") from None
    try:  # the study queues it through the space's parameters, so it must be a point of the space
        resized = spec.with_input(height=height, width=width)
        SearchSpace(resized.input).encode(resized)
    except SpecError as exc:
        raise UsageError(f"--baseline {path}: not a net of the search space ({str(exc).splitlines()[0]})") from None
    return Baseline(str(file.resolve()), spec.to_dict(), within, explicit)


def limits(costs: dict, objectives: tuple[Objective, ...], explicit: Constraints) -> Constraints:
    """The constraints of a search within the baseline: each objective's cost at most the baseline's,
    or at most the --max-* flag where that is tighter; a flag on another cost stays as given.

    Latency is timed, so its limit is the baseline's median plus its interquartile range: timing noise
    alone must not make the baseline (or a net as fast) infeasible when its trial times it again."""
    out = dataclasses.asdict(explicit)
    for o in objectives:
        name = LIMITS.get(o.key)
        if name is not None:
            own = float(costs[o.key]) + (float(costs.get("latency_iqr_ms", 0.0)) if o.key == "latency_ms" else 0.0)
            out[name] = own if out[name] is None else min(out[name], own)
    return Constraints(**out)


def baseline_costs(spec: dict, space_input, settings: TrialSettings) -> dict:
    """The baseline's costs as its trial will measure them: at the study's input, built at the deployment size."""
    from trainers.costs import measure_costs

    net = ArchSpec.from_dict(spec).with_input(**dataclasses.asdict(space_input))
    return measure_costs(settings.deployed(net), settings.device, runs=settings.latency_runs, threads=settings.threads,
                         backend=settings.latency_backend).to_dict()


def within_baseline(cfg: SearchConfig, space: SearchSpace) -> SearchConfig:
    """`cfg` with the baseline's costs as constraints, under --within-baseline (else `cfg` as it is)."""
    b = cfg.meaning.baseline
    if b is None or not b.within:
        return cfg
    from . import runner

    costs = runner.on_worker(cfg, baseline_costs, b.spec, space.input, cfg.settings)
    limited = limits(costs, cfg.objectives, b.explicit)
    shown = ", ".join(f"{k} <= {v:.4g}" for k, v in dataclasses.asdict(limited).items() if v is not None)
    print(f"within the baseline {b.label} (costs at {cfg.deploy_label}): {shown}")
    return cfg.replace(settings=dataclasses.replace(cfg.settings, constraints=limited))
