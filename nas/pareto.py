"""Objectives, the trials table, the Pareto front, hypervolume and the knee.

Hypervolume is computed on normalised losses with one fixed reference point, so figures are
comparable across runs of the same study size: loss(mIoU) = 1 - mIoU; loss(cost) = cost / scale,
where `scale` is, per cost, twice the most expensive preset's cost at the deployment size (measured
once when the study starts, kept in the study and in config.yaml). The reference point is 1 in every
normalised objective: mIoU 0, or twice the costliest preset's cost. Points beyond it add nothing.

On linear costs every net far cheaper than the presets gets nearly the whole cost axis, so a net ten
times cheaper than another barely counts; `log_losses` scales each cost by its order of magnitude
instead (the same reference point, `LOG_DECADES` decades below it reach loss 0), which is the scale
the comparisons of strategies use (docs/measurement.md, "Which hypervolume").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import optuna
import pandas as pd

from search_spaces import ArchSpec

from .records import COUNTED, TABLE_ATTRS, TrialKey


@dataclass(frozen=True)
class Objective:
    name: str  # CLI name
    key: str  # result / column key
    direction: str  # "maximize" | "minimize"
    label: str  # axis label with unit


OBJECTIVES = {
    "miou": Objective("miou", "miou", "maximize", "validation mIoU"),
    "gmacs": Objective("gmacs", "gmacs", "minimize", "GMACs (1 multiply-add = 1, batch 1)"),
    "latency": Objective("latency", "latency_ms", "minimize", "latency (ms, batch 1, median)"),
    "memory": Objective("memory", "peak_mem_mb", "minimize", "peak activation memory (MB, batch 1)"),
    "params": Objective("params", "params", "minimize", "parameters"),
}


def parse_objectives(text: str) -> tuple[Objective, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in OBJECTIVES]
    if bad or "miou" not in names or len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"--objectives {text!r}: give miou and at least one cost, no repeats, from {list(OBJECTIVES)}")
    return tuple(OBJECTIVES[n] for n in names)


def losses(values: Sequence[float], objectives: Sequence[Objective], scales: dict[str, float]) -> np.ndarray:
    """Normalised losses (lower is better; 1 = the reference point) of one trial's objective values."""
    out = []
    for v, o in zip(values, objectives):
        out.append(1.0 - v if o.direction == "maximize" else v / scales[o.key])
    return np.asarray(out, dtype=float)


LOG_DECADES = 3.0  # costs this many orders of magnitude below the reference get loss 0 on the log scale


def log_losses(values: Sequence[float], objectives: Sequence[Objective], scales: dict[str, float],
               decades: float = LOG_DECADES) -> np.ndarray:
    """Like `losses`, with each cost on a log scale: 1 + log10(cost / scale) / decades, floored at 0."""
    out = []
    for v, o in zip(values, objectives):
        if o.direction == "maximize":
            out.append(1.0 - v)
        else:
            out.append(max(0.0, 1.0 + np.log10(max(float(v), 1e-30) / scales[o.key]) / decades))
    return np.asarray(out, dtype=float)


def hypervolume(loss_rows: Iterable[np.ndarray]) -> float:
    """Hypervolume dominated by these normalised loss vectors, up to the reference point 1."""
    from optuna._hypervolume import compute_hypervolume  # Optuna's exact WFG implementation

    pts = np.array([np.minimum(r, 1.0) for r in loss_rows if np.all(r < 1.0)])
    if len(pts) == 0:
        return 0.0
    return float(compute_hypervolume(pts, np.ones(pts.shape[1])))


def non_domination_ranks(loss_rows: np.ndarray) -> np.ndarray:
    """Rank 0 = the non-dominated rows, rank 1 = non-dominated once those are removed, ..."""
    from optuna.study._multi_objective import _fast_non_domination_rank  # Optuna's own NSGA-II sort

    return _fast_non_domination_rank(np.asarray(loss_rows, dtype=float))


def crowding_distances(loss_rows: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance: the extremes of each objective are infinitely far (always kept),
    the others by the normalised gap between their neighbours, summed over objectives."""
    rows = np.asarray(loss_rows, dtype=float)
    distance = np.zeros(len(rows))
    for column in rows.T:
        order = np.argsort(column, kind="stable")
        span = column[order[-1]] - column[order[0]]
        distance[order[[0, -1]]] = np.inf
        if span > 0 and len(rows) > 2:
            distance[order[1:-1]] += (column[order[2:]] - column[order[:-2]]) / span
    return distance


def counted_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that used up budget, in order; interrupted attempts (re-queued on resume) excluded."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(TrialKey.STATUS) in COUNTED and not t.user_attrs.get(TrialKey.INTERRUPTED)]


def front_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Pareto-optimal fully trained, feasible trials (early-stopped and infeasible are PRUNED)."""
    return sorted(study.best_trials, key=lambda t: t.number)


def hypervolume_history(trials: Iterable[optuna.trial.FrozenTrial], objectives: Sequence[Objective],
                        scales: dict[str, float]) -> list[float]:
    """Hypervolume of the front after each of these trials, in the order given."""
    history, pts = [], []
    for t in trials:
        if t.state == optuna.trial.TrialState.COMPLETE:
            pts.append(losses(t.values, objectives, scales))
        history.append(hypervolume(pts))
    return history


def knee(values: Sequence[Sequence[float]], objectives: Sequence[Objective]) -> int:
    """Index of the front member nearest the ideal point after min-max scaling each objective over the front."""
    vals = np.array([[(-v if o.direction == "maximize" else v) for v, o in zip(row, objectives)] for row in values])
    span = vals.max(0) - vals.min(0)
    scaled = (vals - vals.min(0)) / np.where(span > 0, span, 1.0)
    return int(np.argmin(np.linalg.norm(scaled, axis=1)))


def pick(values: Sequence[Sequence[float]], objectives: Sequence[Objective], how: str) -> int:
    """Index of the front member `how` picks: the knee, or the best in one objective."""
    if how == "knee":
        return knee(values, objectives)
    idx = [o.name for o in objectives].index(how)
    sign = -1 if objectives[idx].direction == "maximize" else 1
    return min(range(len(values)), key=lambda i: sign * values[i][idx])


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for i, v in enumerate(value):
            _flatten(f"{prefix}[{i}]", v, out)
    elif isinstance(value, list):
        out[prefix] = "-".join(map(str, value))
    else:
        out[prefix] = value


def trial_spec(t: optuna.trial.FrozenTrial) -> ArchSpec:
    return ArchSpec.from_dict(t.user_attrs[TrialKey.SPEC])


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per counted trial: state, every ArchSpec field, every objective, timing, reason."""
    rows = []
    for t in counted_trials(study):
        a = t.user_attrs
        row = {"trial": t.number, "state": a[TrialKey.STATUS], "preset": a.get(TrialKey.PRESET, ""),
               "tag": trial_spec(t).tag() if TrialKey.SPEC in a else ""}
        for key in TABLE_ATTRS:
            row[key] = a.get(key)
        if TrialKey.SPEC in a:
            spec = dict(a[TrialKey.SPEC])
            spec.pop("name", None)
            _flatten("", spec, row)
        rows.append(row)
    return pd.DataFrame(rows)
