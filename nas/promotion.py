"""Fair early stopping: successive halving whose rungs rank trials on every objective, not mIoU alone.

At each rung (an epoch count: 1, eta, eta^2, ... below the last epoch) a trial goes on only if it
is among the best ceil(n / eta) of the n trials that have reached that rung so far (asynchronous,
as ASHA). "Best" is multi-objective: non-dominated sorting over (the epoch's mIoU, the costs), ties
within a rank broken by crowding distance (NSGA-II's: the extremes of every objective first, so
the best mIoU so far and the cheapest net always go on). So a cheap net with modest early mIoU that
nothing dominates goes on, where mIoU-only promotion would stop it: it may end on the front.

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
from .records import Status


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


def mo_asha(objectives: Sequence[Objective], scales: dict[str, float], max_epochs: int, early_stopped: set[str],
            eta: int = 2):
    """The Ray Tune scheduler; trial ids it stops are added to `early_stopped`."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class MultiObjectiveASHA(FIFOScheduler):
        def __init__(self) -> None:
            super().__init__()
            self.rungs = {epoch: [] for epoch in rungs(max_epochs, eta)}

        def on_trial_result(self, tune_controller, trial, result):
            epoch = result.get("epoch")
            if epoch not in self.rungs or result.get("status") != Status.RUNNING:
                return TrialScheduler.CONTINUE
            recorded = self.rungs[epoch]
            recorded.append(rung_losses(result, objectives, scales))
            if trial.config.get("preset") or promotes(len(recorded) - 1, np.array(recorded), eta):
                return TrialScheduler.CONTINUE
            early_stopped.add(trial.trial_id)
            return TrialScheduler.STOP

    return MultiObjectiveASHA()
