"""Choosing which nets to train when only mIoU is expensive: every cost of a candidate is exact and
free before training, so a strategy can screen many candidates and spend training on the few whose
predicted mIoU would move the front the most.

Two live strategies over one costed candidate pool (`PoolSampler`): `--sampler screen` ranks the
candidates by a training-free score relative to nets of their GMACs (`fisher_screen`, the replay's
winner); `--sampler predict` by expected hypervolume gain, where `Ensemble` predicts mIoU with its
uncertainty (bootstrapped ridge regressions) and `expected_gains` averages the hypervolume each
candidate would add over the ensemble's members. The replay (benchmarks/replay.py) uses the same
pieces on the space's table.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from .pareto import LOG_DECADES, Objective, hypervolume, log_losses, non_domination_ranks
from .records import Status, TrialKey
from .strategy import FrontLocalSampler, ProposingSampler, Ridge, active_key, features

MEMBERS = 8  # bootstrap replicas: enough for a spread, cheap enough to refit per proposal


class Ensemble:
    """Ridge regressions fitted on bootstrap resamples of the rows; the spread of their predictions
    is the model's uncertainty where it has seen few similar nets."""

    def __init__(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, members: int = MEMBERS):
        n = len(y)
        self.models = []
        for _ in range(members):
            pick = rng.integers(0, n, n)
            if len(np.unique(pick)) < 2:  # a degenerate resample of a tiny set: use every row
                pick = np.arange(n)
            self.models.append(Ridge(x[pick], y[pick]))

    def samples(self, x: np.ndarray) -> np.ndarray:
        """(members, rows): each member's prediction for every row of `x`."""
        return np.array([m.predict(x) for m in self.models])


def expected_gains(front: np.ndarray, cost_losses: np.ndarray, miou_losses: np.ndarray) -> np.ndarray:
    """For each candidate (a row of `cost_losses`, its exact normalised costs), the mean over the
    samples in `miou_losses` (samples x candidates, predicted 1 - mIoU) of the hypervolume the
    candidate would add to `front` (normalised loss rows, mIoU loss first). Where no candidate is
    expected to add any, minus the mean additive epsilon each would need to escape domination,
    so the least-dominated candidate still ranks first."""
    base = hypervolume(front)
    k, n = miou_losses.shape
    gains = np.zeros(n)
    escape = np.zeros(n)
    for j in range(n):
        for s in range(k):
            point = np.concatenate([[miou_losses[s, j]], cost_losses[j]])
            gains[j] += hypervolume(np.vstack([front, point])) - base if len(front) else hypervolume([point])
            if len(front):
                escape[j] += np.max(np.min(point - front, axis=1))
    gains /= k
    if gains.max() > 0 or not len(front):
        return gains
    return -escape / k


def quantiles(values: np.ndarray) -> np.ndarray:
    """Each column's values as rank quantiles in [0, 1] (scores span dozens of orders of magnitude)."""
    values = np.asarray(values, dtype=float)
    out = np.zeros_like(values)
    for j in range(values.shape[1]):
        col = np.nan_to_num(values[:, j], nan=np.nanmin(values[:, j]) if np.isfinite(values[:, j]).any() else 0.0)
        order = col.argsort(kind="stable").argsort(kind="stable")
        out[:, j] = order / max(1, len(col) - 1)
    return out


def gmacs_residuals(higher_better: np.ndarray, gmacs: np.ndarray) -> np.ndarray:
    """How much better each net screens than nets of its GMACs: the residual of its score's rank
    quantile regressed (least squares, with intercept) on log GMACs."""
    q = quantiles(np.asarray(higher_better, dtype=float).reshape(-1, 1))[:, 0]
    fit = np.column_stack([np.ones(len(q)), np.log(gmacs)])
    return q - fit @ np.linalg.lstsq(fit, q, rcond=None)[0]


# --- the live sampler ---------------------------------------------------------------------------
POOL_COSTS = ("gmacs", "params", "peak_mem_mb")  # exact and quick to count in the driver (no timing)
MAX_CANDIDATES = 64  # untried candidates chosen among per proposal (a seeded subset of the backlog)


def pool_costs(spec) -> dict[str, float]:
    """A candidate's exact costs at the study's input size, counted in the driver on one thread."""
    import torch

    from search_spaces import build_model
    from trainers.costs import count_gmacs, count_params, measure_peak_memory_mb

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the cores belong to the trials
    try:
        model = build_model(spec).eval()
        return {"gmacs": count_gmacs(model, spec), "params": float(count_params(model)),
                "peak_mem_mb": measure_peak_memory_mb(model, spec)}
    finally:
        torch.set_num_threads(threads)


def fisher_screen(data, seed: int = 0, batch: int = 32) -> Callable[[Any], float]:
    """The screen that beat random search in the replay: a candidate's fisher score
    (`trainers.scores.fisher`) on one seeded minibatch of `batch` training images, for a fresh net
    initialised with `seed`. On this space it ranks mIoU backwards among nets of equal GMACs, so
    the sampler prefers low values (docs/benchmarks.md, "Training-free scores against mIoU")."""
    import torch

    from trainers.data import to_float
    from trainers.scores import fisher, network_factory

    pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:batch]
    images, masks = to_float(data.train.images[pick]), data.train.masks[pick].long()

    def score(spec) -> float:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the cores belong to the trials
        try:
            with torch.random.fork_rng(devices=[]):
                return fisher(network_factory(spec, masks, seed)(), images, masks)
        finally:
            torch.set_num_threads(threads)
    return score


class PoolSampler(ProposingSampler):
    """A strategy whose proposals are candidates from a pool sampled and costed in the driver.

    Candidate k is a random point drawn from (seed, k), so the pool is the same in every run of a
    seed; `first` are revealed at the start and `refill` more per trial number, so the costing
    (about a second per net) is spread over the search. Until `startup` trials have finished, the
    first untried revealed candidate is proposed (a random net); then `choose` picks among the
    untried ones. An enqueued trial (a preset, a requeue) keeps its parameters. Same seed and
    history, same proposals.
    """

    def __init__(self, objectives: Sequence[Objective], space, seed: int = 0, startup: int = 4, first: int = 32,
                 refill: int = 2, costs=pool_costs):
        super().__init__(seed)
        self.objectives, self.space, self.seed = tuple(objectives), space, seed
        self.startup, self.first, self.refill, self.costs = startup, first, refill, costs
        self._pool: list[tuple[dict, tuple, dict]] = []  # (values, identity, pool costs), in draw order
        self._measured: dict[tuple, dict] = {}  # identity -> pool costs, the tried nets' too

    def propose(self, trials: Sequence[FrozenTrial], number: int, scales: dict[str, float]) -> dict[str, Any]:
        names = {p.name for p in self.space.params}
        known = [t for t in trials if t.params and set(t.params) >= names]
        tried = {active_key(t.params, self.space.params) for t in known}
        self._reveal(self.first + self.refill * number)
        cands = [c for c in self._pool if c[1] not in tried]
        while not cands:  # every revealed net was tried (a study grown past its pool): reveal further
            self._reveal(len(self._pool) + 1)
            cands = [c for c in self._pool[-1:] if c[1] not in tried]
        if len(cands) > MAX_CANDIDATES:  # a long search's backlog: a seeded subset keeps proposals quick
            keep = np.random.default_rng([self.seed, 2, number]).choice(len(cands), MAX_CANDIDATES, replace=False)
            cands = [cands[i] for i in sorted(keep)]
        done = [t for t in known if t.state == TrialState.COMPLETE and t.values]
        if len(done) < self.startup or len(cands) < 2 or not scales:
            return dict(cands[0][0])
        return dict(cands[self.choose(cands, known, done, number, scales)][0])

    def choose(self, cands: list, known: list[FrozenTrial], done: list[FrozenTrial], number: int,
               scales: dict[str, float]) -> int:
        """The index in `cands` of the candidate to train next."""
        raise NotImplementedError

    def _reveal(self, size: int) -> None:
        while len(self._pool) < size:
            rng = np.random.default_rng([self.seed, 1, len(self._pool)])
            values = {p.name: _draw(p, rng) for p in self.space.params}
            key = active_key(values, self.space.params)
            self._pool.append((values, key, self._pool_costs(values, key)))

    def _pool_costs(self, values: dict, key: tuple) -> dict:
        if key not in self._measured:
            self._measured[key] = self.costs(self.space.decode(self.space.active_values(values)))
        return self._measured[key]


class ScreeningSampler(PoolSampler):
    """`--sampler screen`, the replay's winner: after start-up, the untried candidate that screens
    best (lowest `score`) relative to nets of its GMACs."""

    def __init__(self, objectives: Sequence[Objective], space, score: Callable[[Any], float], seed: int = 0, **pool):
        super().__init__(objectives, space, seed, **pool)
        self.score = score
        self._scores: dict[tuple, float] = {}  # identity -> screening score, lower better
        self._residuals: tuple[int, dict[tuple, float]] = (0, {})  # (pool size, identity -> residual)

    def choose(self, cands, known, done, number, scales) -> int:
        residual = self._screened()
        return int(np.argmax([residual[key] for _, key, _ in cands]))

    def _screened(self) -> dict[tuple, float]:
        """How much better each revealed candidate screens than nets of its GMACs: the residual of its
        score's rank quantile (low score = high) regressed on log GMACs over the whole revealed pool;
        refitted only when the pool has grown."""
        if self._residuals[0] == len(self._pool):
            return self._residuals[1]
        for values, key, _ in self._pool:
            if key not in self._scores:
                self._scores[key] = self.score(self.space.decode(self.space.active_values(values)))
        residual = gmacs_residuals(-np.array([self._scores[key] for _, key, _ in self._pool]),
                                   np.array([c["gmacs"] for _, _, c in self._pool]))
        self._residuals = (len(self._pool), {key: float(r) for (_, key, _), r in zip(self._pool, residual)})
        return self._residuals[1]


class PredictingSampler(PoolSampler):
    """`--sampler predict`: after start-up, the untried candidate with the largest expected gain in
    log-cost hypervolume. A bootstrap ensemble of ridge regressions (parameter codes + log pool costs,
    and a flag per epoch for the early-stopped trials' shorter training) predicts each candidate's
    mIoU as if fully trained; each cost objective is the pool's exact value mapped to the trials'
    measured scale (identity at the study size; latency, not counted in the pool, is predicted from
    the pool costs the same way)."""

    def choose(self, cands, known, done, number, scales) -> int:
        rng = np.random.default_rng([self.seed, number])
        rows = [t for t in known if all(o.key in t.user_attrs for o in self.objectives)]
        x = np.array([self._x(t.params) for t in rows])
        xc = np.array([self._x(c[0], c[2]) for c in cands])
        miou = self._miou_samples(rows, x, xc, rng)
        costs = np.column_stack([self._cost(o, rows, x, xc, scales) for o in self.objectives[1:]])
        front_rows = np.array([log_losses(t.values, self.objectives, scales) for t in done])
        front = front_rows[non_domination_ranks(front_rows) == 0]
        return int(np.argmax(expected_gains(front, costs, miou)))

    def _x(self, values: dict, costs: dict | None = None) -> np.ndarray:
        costs = costs or self._pool_costs(values, active_key(values, self.space.params))
        return np.concatenate([features(values, self.space.params), np.log([costs[k] for k in POOL_COSTS])])

    def _miou_samples(self, rows, x, xc, rng) -> np.ndarray:
        """Predicted 1 - mIoU of each candidate, one row per ensemble member; early-stopped trials
        count at the epoch they reached, flagged, and candidates are predicted unflagged."""
        epochs = [t.user_attrs.get(TrialKey.EPOCHS, 0) if t.user_attrs.get(TrialKey.STATUS) == Status.STOPPED else None
                  for t in rows]
        rungs = sorted({e for e in epochs if e is not None})
        flags = np.array([[float(e == r) for r in rungs] for e in epochs]).reshape(len(rows), len(rungs))
        y = np.array([1.0 - float(t.user_attrs[TrialKey.MIOU]) for t in rows])
        model = Ensemble(np.column_stack([x, flags]), y, rng)
        return np.clip(model.samples(np.column_stack([xc, np.zeros((len(xc), len(rungs)))])), 0.0, 1.0)

    def _cost(self, o: Objective, rows, x, xc, scales) -> np.ndarray:
        """A cost objective of each candidate as a log-scale loss: its pool value mapped to the
        trials' measurements (a log-linear fit), or predicted from the pool costs for latency."""
        y = np.log([max(float(t.user_attrs[o.key]), 1e-30) for t in rows])
        if o.key in POOL_COSTS:
            j = len(x[0]) - len(POOL_COSTS) + POOL_COSTS.index(o.key)
            slope, intercept = np.polyfit(x[:, j], y, 1) if np.ptp(x[:, j]) > 0 else (1.0, float(np.mean(y - x[:, j])))
            pred = intercept + slope * xc[:, j]
        else:
            pred = Ridge(x, y).predict(xc)
        return np.maximum(0.0, 1.0 + (pred - np.log(scales[o.key])) / np.log(10) / LOG_DECADES)


def _draw(p, rng: np.random.Generator) -> Any:
    return FrontLocalSampler._draw(p, rng)
