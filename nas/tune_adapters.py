"""The Ray Tune side of a search: the searcher that asks the Optuna study for trials, the
multi-objective successive-halving scheduler, and the callbacks. Imported only when trials run,
since it imports Ray.

The searcher asks the scheduler whether it stopped a trial: a trial whose last report says
RUNNING ended either because the scheduler stopped it (a stopped trial) or because the search
was shut down (left RUNNING, so --resume runs it again).
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, Sequence

import numpy as np
import optuna
from ray import cloudpickle
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.tune import Callback
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from search_spaces import ArchSpec
from search_spaces.space import SearchSpace

from .pareto import Objective
from .promotion import promotes, rung_losses, rungs
from .records import Status, TrialKey
from .study import record_outcome, requeue

MAX_NODE_LOSSES = 3  # a trial whose node is lost this often (say it takes the node's memory) is failed


def node_lost(exc: BaseException | None) -> bool:
    """Whether a trial's error is the loss of its node (its actor unreachable, or gone with the node)
    rather than the death of its own worker process."""
    if isinstance(exc, RayActorError) and exc.preempted:
        return True
    return isinstance(exc, ActorUnavailableError) or (isinstance(exc, ActorDiedError) and "its node has died" in str(exc))


class FullTraining(FIFOScheduler):
    """No early stopping: every trial trains to its last epoch."""

    def stopped(self, trial_id: str) -> bool:
        return False


class MultiObjectiveASHA(FIFOScheduler):
    """Successive halving ranked on every objective (`nas.promotion`); presets always go on."""

    def __init__(self, objectives: Sequence[Objective], scales: dict[str, float], max_epochs: int, eta: int = 2):
        super().__init__()
        self.objectives, self.scales, self.eta = objectives, scales, eta
        self.rungs = {epoch: [] for epoch in rungs(max_epochs, eta)}
        self._stopped: set[str] = set()

    def stopped(self, trial_id: str) -> bool:
        """Whether this scheduler stopped the trial."""
        return trial_id in self._stopped

    def on_trial_result(self, tune_controller, trial, result):
        epoch = result.get("epoch")
        if epoch not in self.rungs or result.get("status") != Status.RUNNING:
            return TrialScheduler.CONTINUE
        recorded = self.rungs[epoch]
        recorded.append(rung_losses(result, self.objectives, self.scales))
        if trial.config.get("preset") or promotes(len(recorded) - 1, np.array(recorded), self.eta):
            return TrialScheduler.CONTINUE
        self._stopped.add(trial.trial_id)
        return TrialScheduler.STOP


class StudySearcher(Searcher):
    """Ray Tune asks it for trials; it asks the Optuna study (ask/tell) and records outcomes."""

    def __init__(self, study: optuna.Study, space: SearchSpace, objectives: tuple[Objective, ...], owner: str,
                 reconstruction: Callable[[ArchSpec], str | None], scheduler: FullTraining | MultiObjectiveASHA,
                 stop: StopOnRequest | None = None):
        super().__init__(metric=TrialKey.MIOU, mode="max")
        self.study, self.space, self.objectives, self.owner = study, space, objectives, owner
        self.reconstruction, self.scheduler, self.stop = reconstruction, scheduler, stop
        self.trials: dict[str, optuna.Trial] = {}
        self.errored: dict[str, optuna.Trial] = {}  # told once the error callback has seen why
        self.lost = 0  # trials queued again because their node was lost
        self.callback = ErrorCallback(self)

    def __getstate__(self) -> dict:
        # Ray Tune pickles its tune config (this searcher) for a restore this search never asks for,
        # and NSGA-II's sampler, in the study, holds a lock that cannot be pickled.
        return {**self.__dict__, "study": None, "trials": {}, "errored": {}}

    def suggest(self, trial_id: str) -> dict | None:
        with warnings.catch_warnings():  # "heartbeat is meant for optimize()": this driver beats itself
            warnings.simplefilter("ignore", UserWarning)
            trial = self.study.ask()
        spec = self.space.sample(trial)
        preset = trial.user_attrs.get(TrialKey.PRESET)
        if preset:
            spec = ArchSpec.from_dict({**spec.to_dict(), "name": preset})
        trial.set_user_attr(TrialKey.SPEC, spec.to_dict())
        trial.set_user_attr(TrialKey.OWNER, self.owner)
        retry_of = trial.user_attrs.get(TrialKey.RETRY_OF)
        try:  # beating before anyone can see it RUNNING; a busy database skips to the next beat
            self.study._storage.record_heartbeat(trial._trial_id)
        except Exception:
            pass
        self.trials[trial_id] = trial
        return {"spec": spec.to_dict(), "number": trial.number, "preset": preset or "",
                "retry_of": -1 if retry_of is None else retry_of, "reconstruction": self.reconstruction(spec),
                "prior_attempts": trial.user_attrs.get(TrialKey.PRIOR_ATTEMPTS, 0)}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.trials:
            return
        if error and self.stop is not None and self.stop.stop_all():
            return  # its worker was ended by the stop request: left in flight, queued again (requeue_in_flight)
        if not error and (result or {}).get("status") == Status.RUNNING and not self.scheduler.stopped(trial_id):
            return  # interrupted by a shutdown: left in flight, queued again
        trial = self.trials.pop(trial_id)
        if error:  # Ray Tune hands the callback the error right after this call
            self.errored[trial_id] = trial
            return
        record_outcome(self.study, trial, result, error, self.objectives)

    def judge_error(self, trial_id: str, exc: BaseException | None) -> None:
        """A lost node interrupts its trials: they are queued again, not failed. Ray Tune's one
        retry does not cover it: two futures on a dead node's actor count as two failures, and
        a node may die twice. A trial whose own worker died (twice) is a failure."""
        trial = self.errored.pop(trial_id, None)
        if trial is None:
            return
        losses = trial.user_attrs.get(TrialKey.NODE_LOSSES, 0) + 1
        if node_lost(exc) and losses <= MAX_NODE_LOSSES:
            self.study._storage.set_trial_user_attr(trial._trial_id, TrialKey.INTERRUPTED, True)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            requeue(self.study, trial, **{TrialKey.NODE_LOSSES: losses})
            self.lost += 1
        else:
            record_outcome(self.study, trial, None, True, self.objectives)

    def flush(self) -> None:
        for trial_id in list(self.errored):  # an error the callback never saw: a failure, as before
            self.judge_error(trial_id, None)

    def requeue_in_flight(self) -> int:
        """Queue again the trials Ray Tune ended without an outcome (a stop request ends the run with
        trials in flight, or asked for and not yet started): marked interrupted, so none is counted
        and --resume runs each once more. Returns how many."""
        n = 0
        for trial_id in list(self.trials):
            trial = self.trials.pop(trial_id)
            self.study._storage.set_trial_user_attr(trial._trial_id, TrialKey.INTERRUPTED, True)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            requeue(self.study, trial)
            n += 1
        return n


class StopOnRequest(Stopper, Callback):
    """Ends the Ray Tune run once `event` is set (nas.interrupt): its trials are stopped, not told.

    It also ends the running trials' workers at once (as a callback it holds Ray Tune's list of
    trials): Ray Tune's own stop waits for a trial's next report (an epoch may take minutes), then
    10 s more, before it kills the worker."""

    def __init__(self, event):
        self.event = event
        self._trials: list = []

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        stopping = self.event is not None and self.event.is_set()
        if stopping and self._trials:
            import ray

            for trial in self._trials:  # Ray Tune asks before it stops the trials: their workers are still known
                actor = trial.temporary_state.ray_actor
                if actor is not None and trial.status == "RUNNING":
                    ray.kill(actor, no_restart=True)
            self._trials = []
        return stopping

    def on_step_begin(self, iteration, trials, **info):
        self._trials = trials

    def __getstate__(self) -> dict:  # Ray Tune pickles its run config for a restore this search never asks for
        return {"event": None, "_trials": []}


class ErrorCallback(Callback):
    """Hands the searcher each trial's error, which Ray Tune gives callbacks only."""

    def __init__(self, searcher: StudySearcher):
        self.searcher = searcher

    def on_trial_error(self, iteration, trials, trial, **info):
        self.searcher.judge_error(trial.trial_id, latest_error(trial))


def latest_error(trial) -> BaseException | None:
    """The error that just ended a Ray Tune trial (None: none readable, judged a failure).

    Ray Tune writes it at once into the trial's folder on the driver but copies it to the run's
    storage only at its next sync: read from storage, a trial that failed twice in one moment (two
    calls on its lost node's actor) has no error yet, and one that failed twice apart has the first.
    """
    try:
        path = trial.pickled_error_file
        if path and os.path.exists(path):
            with open(path, "rb") as f:
                return cloudpickle.load(f)
        return trial.get_pickled_error()
    except Exception:
        return None


class ProgressCallback(Callback):
    """Refreshes the search's status line (an object with `running` and `show()`) as trials end."""

    def __init__(self, progress):
        self.progress = progress

    def __getstate__(self) -> dict:  # pickled with the run config: the progress holds the study (see above)
        return {"progress": None}

    def _update(self, trials) -> None:
        self.progress.running = sum(t.status == "RUNNING" for t in trials)  # Ray Tune's state, not ours
        self.progress.show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._update(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update(trials)
