"""How the driver judges a trial Ray Tune gives up on: a lost node's trial is queued again, any other
error is a failure. The judge reads the error Ray Tune has just written for the trial, which Ray Tune
copies to the run's storage only later (two failures in one moment used to read as no error at all)."""
import os

import optuna
import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from nas.pareto import OBJECTIVES
from nas.records import WORKER_DIED, TrialKey
from nas.tune_adapters import FullTraining, StudySearcher, latest_error, node_lost

LOST = ActorUnavailableError("The actor is temporarily unavailable: RpcError: RPC error: Socket closed", b"\x01" * 16)
DIED = ActorDiedError()  # the worker process died, its node still up


@pytest.fixture
def tune_trial(tmp_path):
    """A Ray Tune trial with its folders, the way the tuner makes them (Ray must be up for its session folder)."""
    import ray
    from ray.train._internal.storage import StorageContext
    from ray.tune import register_trainable
    from ray.tune.experiment import Trial

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 _temp_dir=f"/tmp/lightseg-ray-{os.getuid()}")
    register_trainable("nothing", lambda config: None)
    trial = Trial("nothing", config={}, storage=StorageContext(storage_path=str(tmp_path / "tune"), experiment_dir_name="exp"))
    trial.init_local_path()
    yield trial
    if started:
        ray.shutdown()


def searcher_with_one_trial(trial_id: str) -> tuple[StudySearcher, optuna.Study]:
    objectives = (OBJECTIVES["miou"], OBJECTIVES["gmacs"])
    study = optuna.create_study(directions=[o.direction for o in objectives])
    searcher = StudySearcher(study, None, objectives, "me", lambda spec: None, FullTraining())
    searcher.trials[trial_id] = study.ask({"x": optuna.distributions.IntDistribution(0, 9)})
    return searcher, study


def test_a_lost_node_and_a_dead_worker_are_told_apart():
    assert node_lost(LOST)
    assert not node_lost(DIED)
    assert not node_lost(None)


def test_two_failures_at_once_are_read_before_ray_tune_copies_them_to_storage(tune_trial):
    # a lost node's actor fails both calls in flight on it: Ray Tune records two failures at once
    tune_trial.handle_error(LOST)
    tune_trial.handle_error(LOST)
    assert tune_trial.get_pickled_error() is None  # not in the run's storage yet
    assert isinstance(latest_error(tune_trial), ActorUnavailableError)

    searcher, study = searcher_with_one_trial(tune_trial.trial_id)
    searcher.on_trial_complete(tune_trial.trial_id, error=True)
    searcher.callback.on_trial_error(0, [tune_trial], tune_trial)
    first, again = study.get_trials(deepcopy=False)
    assert first.state == optuna.trial.TrialState.FAIL and first.user_attrs[TrialKey.INTERRUPTED]
    assert again.state == optuna.trial.TrialState.WAITING and again.user_attrs[TrialKey.NODE_LOSSES] == 1
    assert searcher.lost == 1


def test_the_latest_of_two_failures_apart_is_judged(tune_trial):
    tune_trial.handle_error(LOST)
    tune_trial.handle_error(DIED)  # retried after a lost node, then its own worker died
    assert isinstance(latest_error(tune_trial), ActorDiedError)

    searcher, study = searcher_with_one_trial(tune_trial.trial_id)
    searcher.on_trial_complete(tune_trial.trial_id, error=True)
    searcher.callback.on_trial_error(0, [tune_trial], tune_trial)
    (only,) = study.get_trials(deepcopy=False)
    assert only.state == optuna.trial.TrialState.FAIL and only.user_attrs["reason"] == WORKER_DIED
    assert searcher.lost == 0
