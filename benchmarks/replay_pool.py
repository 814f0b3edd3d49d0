"""The replay's pool and run: the table's nets with every figure a replay needs (`Pool`), and one
strategy's run over them (`Run`): which nets reached which epoch, the compute spent, and the front it
reports with its validated hypervolume. benchmarks/replay.py holds the strategies and the command.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from nas.pareto import OBJECTIVES, crowding_distances, hypervolume, log_losses, losses, non_domination_ranks
from nas.promotion import promotes, rungs
from nas.screening import gmacs_residuals, quantiles

OBJS = (OBJECTIVES["miou"], OBJECTIVES["gmacs"], OBJECTIVES["memory"])
COSTS = [o.key for o in OBJS[1:]]
EPOCHS = 3
VAL_MAX = 12  # the search's default --val-max
# Screening's score, "-" for lower is better: fisher, whose partial rank correlation with search-protocol
# mIoU given GMACs was the strongest of the six on the whole table, and negative (docs/benchmarks.md).
SCREEN = "-fisher"


@dataclass(frozen=True)
class Pool:
    """The table's nets that have every figure a replay needs."""
    index: np.ndarray  # the table's index of each net
    curve: np.ndarray  # (nets, EPOCHS) search-protocol mIoU after each epoch
    val: np.ndarray  # validated mIoU; NaN where the table has none yet
    costs: np.ndarray  # (nets, costs) exact, in COSTS order
    x: np.ndarray  # encoding + log costs: what the live predictor sees before training
    xs: np.ndarray  # and the score quantiles
    code: np.ndarray  # the encoding alone, for local search's distances
    score: np.ndarray  # the screen's quantile, adjusted for GMACs (residual of its rank on log GMACs')
    scales: dict  # the hypervolume reference of each cost
    raw_scores: pd.DataFrame  # every training-free score, for screening by another one

    def __len__(self) -> int:
        return len(self.val)


def screened(scores: pd.DataFrame, gmacs: np.ndarray, screen: str) -> np.ndarray:
    """How much better each net screens than nets of its GMACs: the residual of the rank quantile of
    score column `screen` ("-" first: lower is better) regressed on log GMACs."""
    return gmacs_residuals((-1.0 if screen.startswith("-") else 1.0) * scores[screen.lstrip("-")].to_numpy(float), gmacs)


def load_pool(path: Path, scales: dict, first: int | None = None, screen: str = SCREEN, start: int = 0) -> Pool:
    """The nets of the table's pool with indices `start` to `start + first` (a random subset: the
    pool's order is random) that have a complete search-protocol curve, screened by `screen`."""
    from nas.strategy import features
    from search_spaces import ArchSpec
    from search_spaces.space import SearchSpace
    from trainers.scores import NAMES

    t = pd.read_csv(path).drop_duplicates(["pool_seed", "index"], keep="last")
    t = t[(t["status"] == "complete") & t[f"miou_e{EPOCHS}"].notna() & (t["index"] >= start)
          & (t["index"] < start + (first or len(t) + 10**9))]
    t = t.sort_values("index").reset_index(drop=True)
    specs = [ArchSpec.from_dict(json.loads(s)) for s in t["spec"]]
    space = SearchSpace(specs[0].input)
    code = np.array([features(space.encode(s)) for s in specs])
    costs = t[COSTS].to_numpy(float)
    q = quantiles(t[list(NAMES)].to_numpy(float))
    return Pool(index=t["index"].to_numpy(int), curve=t[[f"miou_e{e}" for e in range(1, EPOCHS + 1)]].to_numpy(float), val=t["miou_val"].to_numpy(float),
                costs=costs, x=np.column_stack([code, np.log(costs)]), xs=np.column_stack([code, np.log(costs), q]), code=code,
                score=screened(t, costs[:, 0], screen), scales=scales, raw_scores=t[list(NAMES)])


class Run:
    """One strategy's run: which nets reached which epoch, and the compute spent."""

    def __init__(self, pool: Pool, budget: int, rng: np.random.Generator):
        self.pool, self.budget, self.rng = pool, budget, rng
        self.reached = np.zeros(len(pool), dtype=int)
        self.spent = 0
        self.rung_rows: dict[int, list] = {}

    def affords(self, epochs: int) -> bool:
        return self.spent + epochs <= self.budget

    def train(self, i: int, to: int) -> None:
        self.spent += to - self.reached[i]
        self.reached[i] = to

    def untried(self) -> np.ndarray:
        return np.flatnonzero(self.reached == 0)

    def draw(self, k: int) -> np.ndarray:
        free = self.untried()
        return self.rng.choice(free, size=min(k, len(free)), replace=False)

    def lin(self, i: int, miou: float) -> np.ndarray:
        return losses([miou, *self.pool.costs[i]], OBJS, self.pool.scales)

    def log(self, i: int, miou: float) -> np.ndarray:
        return log_losses([miou, *self.pool.costs[i]], OBJS, self.pool.scales)

    def full(self, eta: int | None = None, i: int | None = None) -> None:
        """Train net i to the last epoch, or (eta given) as successive halving would: stop it at a
        rung unless it is among the best 1/eta there (nas.promotion's rule, one trial at a time)."""
        for r in rungs(EPOCHS, eta) if eta else []:
            if not self.affords(r - self.reached[i]):
                return
            self.train(i, r)
            rows = self.rung_rows.setdefault(r, [])
            rows.append(self.lin(i, self.pool.curve[i, r - 1]))
            if not promotes(len(rows) - 1, np.array(rows), eta):
                return
        if self.affords(EPOCHS - self.reached[i]):
            self.train(i, EPOCHS)

    def front(self, scale: str = "log") -> np.ndarray:
        """The search-protocol front of the fully trained nets, as normalised loss rows."""
        done = np.flatnonzero(self.reached == EPOCHS)
        rows = np.array([(self.log if scale == "log" else self.lin)(i, self.pool.curve[i, -1]) for i in done])
        return rows[non_domination_ranks(rows) == 0] if len(rows) else rows.reshape(0, len(OBJS))

    def reported(self) -> np.ndarray:
        """What the validated stage would train: the front's nets, at most VAL_MAX by crowding."""
        done = np.flatnonzero(self.reached == EPOCHS)
        if not len(done):
            return done
        rows = np.array([self.lin(i, self.pool.curve[i, -1]) for i in done])
        front = done[non_domination_ranks(rows) == 0]
        if len(front) > VAL_MAX:
            crowd = crowding_distances(np.array([self.lin(i, self.pool.curve[i, -1]) for i in front]))
            front = front[np.argsort(-crowd, kind="stable")[:VAL_MAX]]
        return front

    def validated_hv(self, scale: str) -> float:
        """NaN while a reported net has no validated mIoU in the table."""
        f = self.log if scale == "log" else self.lin
        reported = self.reported()
        if np.isnan(self.pool.val[reported]).any():
            return float("nan")
        return hypervolume(f(i, self.pool.val[i]) for i in reported)
