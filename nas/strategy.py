"""`--sampler local`: local search around the front, each proposal screened by a cheap model.

What this space offers and generic samplers ignore: every cost (GMACs, parameters, latency, memory)
is measured for every trial, the early-stopped ones too, so cost data accrue at every trial while
mIoU accrues only from fully trained ones; and good lightweight nets sit near each other (one
width or core away). Each proposal:

1. until `startup` trials have finished training, a random point (the presets come first anyway);
2. then `candidates` points: most change one or two parameters of a front member (picked with
   probability growing with its exclusive hypervolume, so the members that carry the front are
   explored most), a quarter are random points (so the search never stops exploring);
3. each candidate's objectives are predicted by ridge regressions on the parameters' one-hot
   codes, fitted to the trials so far (log cost on every measured trial; mIoU on the fully trained
   ones and, flagged by the epoch they stopped at, the early-stopped ones). A mutant's prediction
   is its parent's measured value moved by the model's difference between the two, so a weak model
   only has to get the direction of a small change right;
4. the candidate with the largest predicted hypervolume gain over the current front is proposed
   (failing any gain, the one closest to the front); a point already tried or in flight never is.

Proposals are a function of the seed, the trial number and the study's contents, so the same
seed and history give the same proposals, and a resumed search continues deterministically.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from search_spaces.space import PARAMS, Choice, IntRange

from .pareto import Objective, hypervolume, non_domination_ranks
from .records import Status, StudyKey, TrialKey

PENALTIES = (1.0, 10.0, 100.0, 1000.0)  # ridge penalties tried, on ~110 standardised features
OPTIMISM = 0.5  # predicted mIoU is raised by this many residual sds for points far from any trial


def features(values: dict[str, Any], params: Sequence[Choice | IntRange] = PARAMS) -> np.ndarray:
    """One-hot codes of the active choices, integer ranges scaled to [0, 1]; inactive ones zero."""
    seen: dict[str, Any] = {}
    out: list[float] = []
    for p in params:
        active = p.active(seen)
        seen[p.name] = values.get(p.name) if active else None
        if isinstance(p, IntRange):
            out.append((values[p.name] - p.low) / max(1, p.high - p.low) if active else 0.0)
        else:
            out += [float(active and values.get(p.name) == c) for c in p.choices]
    return np.asarray(out)


def active_key(values: dict[str, Any], params: Sequence[Choice | IntRange] = PARAMS) -> tuple:
    """The identity of the network a flat parameter set builds: inactive values dropped, and so are
    those of an empty stage (depth 0 builds only its downsampler; with a TVConv block there, its
    core, kernel and dropout still count)."""
    seen: dict[str, Any] = {}
    for p in params:
        if p.active(seen):
            seen[p.name] = values[p.name]
    for name in inert(seen):
        seen.pop(name)
    return tuple(sorted(seen.items()))


def inert(values: dict[str, Any]) -> list[str]:
    """Parameters that change nothing in the network these values build."""
    out = []
    for i in (1, 2, 3):
        s = f"stage{i}"
        if values.get(f"{s}.depth") == 0:
            out += [n for n in (f"{s}.dilations", f"{s}.growth") if n in values]
            tv = values.get("tvconv_from", 0)
            if not (tv > 0 and i >= tv):
                out += [f"{s}.core", f"{s}.kernel", f"{s}.dropout"]
    return out


class Ridge:
    """Ridge regression on standardised features, its penalty chosen by leave-one-out error (closed
    form, so cheap enough to refit per proposal); `sd` is the leave-one-out error, an honest
    uncertainty where the in-sample residual of ~100 features on a few dozen trials is near zero."""

    def __init__(self, x: np.ndarray, y: np.ndarray, penalties: Sequence[float] = PENALTIES):
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-9
        z = (x - self.mean) / self.scale
        self.intercept = float(y.mean())
        best = None
        for penalty in penalties:
            # dual form: n x n, and the hat matrix's diagonal gives the leave-one-out residuals
            gram_inv = np.linalg.inv(z @ z.T + penalty * np.eye(len(z)))
            alpha = gram_inv @ (y - self.intercept)
            loo = alpha / np.maximum(np.diag(gram_inv), 1e-12)  # e_i / (1 - h_ii) = alpha_i / (G^-1)_ii
            mse = float(np.mean(loo ** 2))
            if best is None or mse < best[0]:
                best = (mse, z.T @ alpha)
        self.sd, self.coef = float(np.sqrt(best[0])), best[1]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Columns missing at the right of `x` (indicators it does not have) count as zero."""
        x = np.pad(x, ((0, 0), (0, len(self.mean) - x.shape[1])))
        return self.intercept + ((x - self.mean) / self.scale) @ self.coef


class ProposingSampler(optuna.samplers.BaseSampler):
    """Optuna's sampler interface for a strategy that proposes whole architectures: `propose` gives
    every parameter of a trial at once (Optuna then asks for them one at a time); an enqueued trial
    (a preset, a requeue) keeps its parameters."""

    def __init__(self, seed: int):
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._proposals: dict[int, dict[str, Any]] = {}

    def propose(self, trials: Sequence[FrozenTrial], number: int, scales: dict[str, float]) -> dict[str, Any]:
        raise NotImplementedError

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.system_attrs.get("fixed_params"):
            return  # an enqueued preset or re-queued trial: its parameters are given
        from threadpoolctl import threadpool_limits

        # One BLAS thread: the driver shares the cores with the trials, and a multi-threaded solve
        # of this size spins far longer than it computes.
        with threadpool_limits(limits=1):
            self._proposals[trial._trial_id] = self.propose(study.get_trials(deepcopy=False), trial.number,
                                                            study.user_attrs.get(StudyKey.HYPERVOLUME_SCALES, {}))

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        proposal = self._proposals.get(trial._trial_id, {})
        if param_name in proposal:
            return proposal[param_name]
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._proposals.pop(trial._trial_id, None)


class FrontLocalSampler(ProposingSampler):
    """Proposes whole architectures (see the module docstring); Optuna asks it one parameter at a time."""

    def __init__(self, objectives: Sequence[Objective], seed: int = 0, startup: int = 6, candidates: int = 32,
                 explore: float = 0.25, params: Sequence[Choice | IntRange] = PARAMS):
        super().__init__(seed)
        self.objectives, self.seed, self.startup = tuple(objectives), seed, startup
        self.n_candidates, self.explore, self.params = candidates, explore, tuple(params)
        self._coded: dict[int, tuple[np.ndarray, tuple]] = {}  # trial id -> (features, key); params never change

    # --- the strategy ---------------------------------------------------------------------------
    def propose(self, trials: Sequence[FrozenTrial], number: int, scales: dict[str, float]) -> dict[str, Any]:
        """The flat parameter set to try as trial `number`, given every trial so far."""
        rng = np.random.default_rng([self.seed, number])
        known = [t for t in trials if t.params and set(t.params) >= {p.name for p in self.params}]
        tried = {self._code(t)[1] for t in known}
        done = [t for t in known if t.state == TrialState.COMPLETE and t.values]
        if len(done) < self.startup:
            return self._fresh(rng, tried, lambda: self.random_point(rng))
        scales = self._scales(known, scales)
        front_losses, parents = self._front(done, scales)
        models = self._fit(known, scales)
        weights = self._parent_weights(front_losses)
        cands: list[tuple[dict, FrozenTrial | None]] = []
        for _ in range(self.n_candidates):
            if rng.random() < self.explore:
                point, parent = self.random_point(rng), None
            else:
                parent = parents[rng.choice(len(parents), p=weights)]
                point = self.mutate(parent.params, rng)
            if active_key(point, self.params) not in tried:
                cands.append((point, parent))
                tried.add(active_key(point, self.params))
        if not cands:
            return self._fresh(rng, tried, lambda: self.random_point(rng))
        predicted = self._predict(cands, models, scales)
        return cands[int(np.argmax(self._scores(predicted, front_losses)))][0]

    def random_point(self, rng: np.random.Generator) -> dict[str, Any]:
        return {p.name: self._draw(p, rng) for p in self.params}

    def mutate(self, values: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Change one or two of the active parameters; a neighbour value for ordered ones, mostly."""
        child = dict(values)
        active = [p for p in self.params if p.name in dict(active_key(values, self.params))]  # ones that matter
        for i in rng.choice(len(active), size=1 + int(rng.random() < 0.5), replace=False):
            p = active[int(i)]
            child[p.name] = self._neighbour(p, values[p.name], rng)
        return child

    # --- helpers --------------------------------------------------------------------------------
    def _fresh(self, rng, tried: set, draw) -> dict[str, Any]:
        for _ in range(100):  # the space has ~10^20 points; a repeat means a tiny test space
            point = draw()
            if active_key(point, self.params) not in tried:
                return point
        return point

    @staticmethod
    def _draw(p: Choice | IntRange, rng: np.random.Generator) -> Any:
        if isinstance(p, IntRange):
            return int(rng.integers(p.low, p.high + 1))
        return p.choices[int(rng.integers(len(p.choices)))]

    def _neighbour(self, p: Choice | IntRange, value: Any, rng: np.random.Generator) -> Any:
        if isinstance(p, IntRange):
            options = [v for v in (value - 1, value + 1) if p.low <= v <= p.high]
            return int(options[int(rng.integers(len(options)))])
        others = [c for c in p.choices if c != value]
        ordered = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in p.choices)
        if ordered and rng.random() < 0.7:
            i = p.choices.index(value)
            others = [p.choices[j] for j in (i - 1, i + 1) if 0 <= j < len(p.choices)]
        return others[int(rng.integers(len(others)))]

    def _scales(self, known: Sequence[FrozenTrial], scales: dict[str, float]) -> dict[str, float]:
        out = {}
        for o in self.objectives:
            if o.direction == "minimize":
                seen = [float(t.user_attrs[o.key]) for t in known if o.key in t.user_attrs]
                out[o.key] = float(scales.get(o.key) or 2.0 * max(seen + [1e-9]))
        return out

    def _losses(self, values: Sequence[float], scales: dict[str, float]) -> np.ndarray:
        return np.array([1.0 - v if o.direction == "maximize" else v / scales[o.key]
                         for v, o in zip(values, self.objectives)])

    def _front(self, done: Sequence[FrozenTrial], scales) -> tuple[np.ndarray, list[FrozenTrial]]:
        rows = np.array([self._losses(t.values, scales) for t in done])
        on_front = non_domination_ranks(rows) == 0
        return rows[on_front], [t for t, f in zip(done, on_front) if f]

    @staticmethod
    def _parent_weights(front: np.ndarray) -> np.ndarray:
        total = hypervolume(front)
        own = np.array([total - hypervolume(np.delete(front, i, 0)) for i in range(len(front))])
        weights = own + 0.1 * max(own.mean(), 1e-12)  # a floor: a member with no exclusive share still gets tried
        return weights / weights.sum()

    def _code(self, t: FrozenTrial) -> tuple[np.ndarray, tuple]:
        """A trial's features and network identity, computed once per trial."""
        if t._trial_id not in self._coded:
            self._coded[t._trial_id] = features(t.params, self.params), active_key(t.params, self.params)
        return self._coded[t._trial_id]

    @staticmethod
    def _target(o: Objective, value: float, scales: dict[str, float]) -> float:
        """An objective's value in its model's units: mIoU loss, or log normalised cost."""
        if o.direction == "maximize":
            return 1.0 - value
        return float(np.log(max(float(value), 1e-12) / scales[o.key]))

    def _fit(self, known, scales) -> dict[str, Ridge]:
        models = {}
        for j, o in enumerate(self.objectives):
            if o.direction == "maximize":
                rows = self._quality_rows(known, j, o, scales)
            else:  # costs are measured on every trial, the early-stopped ones too
                rows = [(self._code(t)[0], self._target(o, t.user_attrs[o.key], scales))
                        for t in known if o.key in t.user_attrs]
            models[o.key] = Ridge(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]))
        return models

    def _quality_rows(self, known, j: int, o: Objective, scales) -> list[tuple[np.ndarray, float]]:
        """mIoU rows: the fully trained trials, and the early-stopped ones at the epoch they stopped,
        flagged by one indicator column per such epoch. Successive halving stops half the trials or
        more, and their short-training mIoU still ranks architectures; the flag takes the level
        offset, and a candidate is predicted as fully trained (its flags, absent, count as zero)."""
        stopped = [t for t in known if t.user_attrs.get(TrialKey.STATUS) == Status.STOPPED and o.key in t.user_attrs]
        rungs = sorted({t.user_attrs.get(TrialKey.EPOCHS, 0) for t in stopped})
        full = [(np.append(self._code(t)[0], np.zeros(len(rungs))), self._target(o, t.values[j], scales))
                for t in known if t.state == TrialState.COMPLETE and t.values]
        return full + [(np.append(self._code(t)[0], [float(t.user_attrs.get(TrialKey.EPOCHS, 0) == r) for r in rungs]),
                        self._target(o, t.user_attrs[o.key], scales)) for t in stopped]

    def _predict(self, cands, models: dict[str, Ridge], scales) -> np.ndarray:
        """Predicted normalised losses of each candidate (a mutant's relative to its parent)."""
        x = np.array([features(point, self.params) for point, _ in cands])
        preds = []
        for j, o in enumerate(self.objectives):
            m = models[o.key]
            raw = m.predict(x)
            # a mutant = its parent's measured value + the model's difference between the two
            base = np.array([self._target(o, parent.values[j], scales) - m.predict(self._code(parent)[0][None])[0]
                             if parent is not None else 0.0 for _, parent in cands])
            value = raw + base
            if o.direction == "maximize":
                # optimism in proportion to how much of the point is new (changed parameters)
                novelty = np.array([1.0 if parent is None else 0.3 for _, parent in cands])
                preds.append(value - OPTIMISM * m.sd * novelty)
            else:
                preds.append(np.exp(value))
        return np.clip(np.array(preds).T, 0.0, None)

    @staticmethod
    def _scores(predicted: np.ndarray, front: np.ndarray) -> np.ndarray:
        """Hypervolume gain over the front; where none gains, minus the additive epsilon each would
        need to escape domination (by every front member), so the least-dominated candidate wins."""
        base = hypervolume(front)
        gain = np.array([hypervolume(np.vstack([front, p])) - base for p in predicted])
        if gain.max() > 0:
            return gain
        return -np.array([np.max(np.min(p - front, axis=1)) for p in predicted])
