"""Fair early stopping: successive halving whose rungs rank trials on every objective, not mIoU alone.

At each rung (an epoch count: 1, eta, eta^2, ... below the last epoch) a trial goes on only if it
is among the best ceil(n / eta) of the n trials that have reached that rung so far (asynchronous,
as ASHA). "Best" is multi-objective: non-dominated sorting over (the epoch's mIoU, the costs), ties
within a rank broken by crowding distance (NSGA-II's: the extremes of every objective first, so
the best mIoU so far and the cheapest net always go on). So a cheap net with modest early mIoU that
nothing dominates goes on, where mIoU-only promotion would stop it: it may end on the front.

The rule lives here; the Ray Tune scheduler that applies it is `nas.tune_adapters.MultiObjectiveASHA`.
It is a Ray Tune scheduler rather than a rung schedule in the driver because Ray Tune already owns
when a trial's worker runs and stops; the decision needs only the reports every trial makes per
epoch (each carries its costs, measured before training). Optuna's multi-objective study cannot
prune (it rejects intermediate reports), so the study only learns the outcome: PRUNED when stopped.
The hand-designed presets are never stopped: the front is measured against fully trained presets.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .pareto import Objective, crowding_distances, losses, non_domination_ranks


def rungs(max_epochs: int, eta: int = 2, grace: int = 1) -> list[int]:
    """Epoch counts at which trials are compared: grace * eta^k below max_epochs."""
    out, e = [], grace
    while e < max_epochs:
        out.append(e)
        e *= eta
    return out


def _sort_keys(loss_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    loss_rows = np.asarray(loss_rows, dtype=float)
    ranks = non_domination_ranks(loss_rows)
    crowding = np.zeros(len(loss_rows))
    for r in np.unique(ranks):
        members = np.flatnonzero(ranks == r)
        crowding[members] = crowding_distances(loss_rows[members])
    return ranks, crowding


def ranked(loss_rows: np.ndarray) -> np.ndarray:
    """Indices of the rows best first: by non-domination rank, then by crowding distance in the rank."""
    ranks, crowding = _sort_keys(loss_rows)
    return np.lexsort((-crowding, ranks))


def promotes(candidate: int, loss_rows: np.ndarray, eta: int = 2) -> bool:
    """Whether row `candidate` is among the best ceil(n / eta) of the n rows recorded at a rung;
    a tie with the last kept row goes on, as ASHA's `>= cutoff` does."""
    ranks, crowding = _sort_keys(loss_rows)
    cutoff = np.lexsort((-crowding, ranks))[math.ceil(len(ranks) / eta) - 1]
    return (ranks[candidate], -crowding[candidate]) <= (ranks[cutoff], -crowding[cutoff])


def rung_losses(result: dict, objectives: Sequence[Objective], scales: dict[str, float]) -> np.ndarray:
    """A trial's normalised losses at an epoch: that epoch's mIoU and its (fixed) costs."""
    return losses([float(result[o.key]) for o in objectives], objectives, scales)
