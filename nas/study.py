"""The study: an Optuna study in RDB storage holds the truth of a search (`nas.runner` executes it).

Optuna samples every architecture (define-by-run through `SearchSpace.sample`) and records every
outcome; Ray Tune runs the trials in parallel with per-trial resources and stops hopeless ones
early (successive halving on all objectives, `nas.promotion`). Early-stopped and infeasible trials are told to Optuna as PRUNED,
so the multi-objective sampler never takes them for finished results and they never sit on the
front; failures are FAIL with their reason. Resume works from the study alone: trials left
RUNNING by a killed driver are marked interrupted and re-queued with the same parameters. The
driver beats Optuna's storage heartbeat for every trial in flight, so on a database shared by
several searches only the trials whose driver has stopped beating are taken for dead, and each
driver runs its own budget.
"""
from __future__ import annotations

import threading
import warnings
from dataclasses import asdict

import optuna
from optuna.trial import TrialState

from search_spaces import ArchSpec, InputSpec, load_preset
from search_spaces.presets import PRESET_NAMES
from search_spaces.space import SearchSpace
from trainers.costs import measure_costs
from trainers.data import SegData

from .config import Baseline, SearchConfig
from .pareto import Objective, counted_trials
from .records import CARRIED, COUNTED, Status, StudyKey, TrialKey, TrialOutcome
from .run_folder import RunFolderError, locked_run_dir  # callers reach them here too
from .storage import open_storage
from .strategy import ProposingSampler
from .trial import TrialSettings

SAMPLERS = ("nsga2", "nsga3", "tpe", "random", "gp", "local", "screen", "predict")
HEARTBEAT_S = 10  # the driver records a heartbeat for each trial in flight this often
GRACE_S = 60  # a RUNNING trial whose heartbeat is older than this belongs to a dead driver


def make_sampler(name: str, seed: int, budget: int = 100, objectives: tuple[Objective, ...] = (),
                 space: SearchSpace | None = None, data: SegData | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler `--sampler name` means (the space is sampled flat: see SearchSpace.sample)."""
    if name in ("nsga2", "nsga3"):
        # A population sized to the budget, so that even a small search breeds a few generations
        # (the default of 50 would leave a 100-trial search in its random first two).
        population = max(8, min(50, budget // 5))
        cls = optuna.samplers.NSGAIISampler if name == "nsga2" else optuna.samplers.NSGAIIISampler
        return cls(seed=seed, population_size=population)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=12)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "local":
        from .strategy import FrontLocalSampler
        return FrontLocalSampler(objectives, seed=seed)
    if name == "screen":
        from .screening import ScreeningSampler, fisher_screen
        return ScreeningSampler(objectives, space, fisher_screen(data), seed=seed)
    if name == "predict":
        from .screening import PredictingSampler
        return PredictingSampler(objectives, space, seed=seed)
    raise ValueError(f"--sampler {name!r}: one of {list(SAMPLERS)}")


# --- the study -----------------------------------------------------------------------------------
def open_study(cfg: SearchConfig, space: SearchSpace | None = None, data: SegData | None = None) -> optuna.Study:
    storage = open_storage(cfg.storage_url, heartbeat=(HEARTBEAT_S, GRACE_S, _requeue))
    study = optuna.create_study(
        study_name=cfg.study, storage=storage, sampler=make_sampler(cfg.options.sampler, cfg.meaning.seed, cfg.budget, cfg.objectives, space, data),
        directions=[o.direction for o in cfg.objectives], load_if_exists=True,
    )
    if study.trials and not isinstance(study.sampler, ProposingSampler):
        # A resumed sampler must not replay the random stream the first run already used. A proposing
        # sampler draws from (seed, trial number) instead, so it keeps its seed, and with it its pool.
        study.sampler = make_sampler(cfg.options.sampler, cfg.meaning.seed + len(study.trials), cfg.budget, cfg.objectives, space, data)
    return study


def name_metrics(study: optuna.Study, objectives: tuple[Objective, ...]) -> None:
    """Name the study's values by their objectives, so that Optuna's dashboard and tools label them."""
    names = [o.key for o in objectives]
    with warnings.catch_warnings():  # metric names are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if study.metric_names != names:
            study.set_metric_names(names)


def check_resumable(study: optuna.Study, cfg: SearchConfig, data: SegData) -> None:
    """Refuse to mix trials of different meaning into one study; remember the meaning otherwise."""
    now = cfg.trial_meaning(data)
    then = study.user_attrs.get(StudyKey.TRIAL_MEANING)
    if then is None:
        study.set_user_attr(StudyKey.TRIAL_MEANING, now)
        return
    # a study from before --deploy-size measured its costs at the size it trained at
    then = {"deploy size": then.get("size"), **then}
    diffs = [f"{k}: {then.get(k, 'unset')} then, {v} now" for k, v in now.items() if then.get(k) != v]
    if diffs:
        raise RunFolderError(f"--resume: study {cfg.study!r} was run with other settings ({'; '.join(diffs)}); "
                             "resume with the same settings, or give another --study or --force")


def recover_stale_trials(study: optuna.Study, owner: str, private: bool) -> int:
    """Re-queue the RUNNING trials whose driver is dead; returns how many.

    This driver's own earlier trials (same run folder, whose lock it now holds) are dead for sure,
    and so is every RUNNING trial of the run folder's `private` database. Any other driver's trial
    is dead only once its heartbeat is older than GRACE_S: a second live search on the same
    database keeps beating, so its trials are never touched.
    """
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if private or t.user_attrs.get(TrialKey.OWNER) == owner:
            study._storage.set_trial_user_attr(t._trial_id, TrialKey.INTERRUPTED, True)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            _requeue(study, t)
            n += 1
    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)  # calls _requeue for each
    return n + len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - before


def requeue(study: optuna.Study, t, **attrs) -> None:
    """Queue trial `t` again with the same parameters and its carried attributes (`attrs` added or
    replacing them)."""
    carried = {k: v for k, v in t.user_attrs.items() if k in CARRIED}
    study.enqueue_trial(t.params, user_attrs={**carried, **attrs}, skip_if_exists=False)


def _requeue(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
    """Queue an interrupted trial again. The FAILed original is not counted: it never got a
    status (or, when this driver fails its own, is marked interrupted)."""
    requeue(study, t)


class Heartbeat:
    """Beats Optuna's storage heartbeat for the trials this driver has in flight, from a thread."""

    def __init__(self, study: optuna.Study, in_flight: dict):
        self.study, self.in_flight = study, in_flight
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="study-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for trial in list(self.in_flight.values()):
                try:
                    self.study._storage.record_heartbeat(trial._trial_id)
                except Exception:  # a busy database skips one beat; the grace period covers several
                    pass

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def enqueue_presets(study: optuna.Study, space: SearchSpace) -> None:
    """Queue every preset not yet in the study (idempotent, so a kill mid-way loses none)."""
    present = {t.user_attrs.get(TrialKey.PRESET) for t in study.get_trials(deepcopy=False)}
    for name in PRESET_NAMES:
        if name in present:
            continue
        spec = load_preset(name, space.input.height, space.input.width, space.input.num_classes, space.input.in_channels)
        study.enqueue_trial(space.encode(spec), user_attrs={TrialKey.PRESET: name})


def enqueue_baseline(study: optuna.Study, space: SearchSpace, baseline: Baseline | None) -> None:
    """Queue the --baseline net, at the study's input, unless the study has it: a reference trial like a
    preset (its `preset` value is the baseline's label), queued before the presets."""
    queued = {t.user_attrs.get(TrialKey.PRESET) for t in study.get_trials(deepcopy=False)}
    if baseline is None or baseline.label in queued:
        return
    spec = ArchSpec.from_dict(baseline.spec).with_input(**asdict(space.input))
    study.enqueue_trial(space.encode(spec), user_attrs={TrialKey.PRESET: baseline.label})


def reference_scales(space: SearchSpace, objectives: tuple[Objective, ...], settings: TrialSettings) -> dict[str, float]:
    """Twice the most expensive preset's cost, per cost, at the deployment size: the fixed HV reference."""
    inp = space.input
    costs = [measure_costs(settings.deployed(load_preset(n, inp.height, inp.width, inp.num_classes, inp.in_channels)),
                           settings.device, runs=10, backend=settings.latency_backend).to_dict() for n in PRESET_NAMES]
    return {o.key: 2.0 * max(float(c[o.key]) for c in costs) for o in objectives if o.direction == "minimize"}


def record_outcome(study: optuna.Study, trial: optuna.Trial, result: dict | None, error: bool,
                   objectives: tuple[Objective, ...]) -> Status:
    """Tell Optuna how a trial ended; returns its status."""
    outcome = TrialOutcome.from_result(result, error)
    for key, value in outcome.attrs.items():
        trial.set_user_attr(key, value)
    if outcome.status == Status.COMPLETE:
        study.tell(trial, outcome.values(objectives))
    else:
        study.tell(trial, state=TrialState.FAIL if outcome.status in (Status.FAILED, Status.DEFERRED) else TrialState.PRUNED)
    return outcome.status


def requeue_deferred(study: optuna.Study, owner: str | None = None) -> int:
    """Queue once more every trial of driver `owner` (None: of any driver, on a private database)
    deferred for running out of memory; returns how many. The deferred original does not count
    against the budget; its repeat, numbered anew, does."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(TrialKey.RETRY_OF) for t in trials}
    n = 0
    for t in trials:
        mine = owner is None or t.user_attrs.get(TrialKey.OWNER) == owner
        if mine and t.state == TrialState.FAIL and t.user_attrs.get(TrialKey.STATUS) == Status.DEFERRED and t.number not in retried:
            requeue(study, t, **{TrialKey.RETRY_OF: t.number, TrialKey.PRIOR_ATTEMPTS: int(t.user_attrs.get(TrialKey.ATTEMPTS, 1))})
            n += 1
    return n


def own_trials(study: optuna.Study, owner: str | None) -> list[optuna.trial.FrozenTrial]:
    """The counted trials of driver `owner` (SearchConfig.budget_owner); None: every counted trial."""
    return [t for t in counted_trials(study) if owner is None or t.user_attrs.get(TrialKey.OWNER) == owner]


def remaining_budget(study: optuna.Study, budget: int, owner: str | None = None) -> int:
    """Trials driver `owner` has yet to run: its budget less the counted trials it ran, so drivers
    sharing a study run the sum of their budgets (None, a private database: every trial counts)."""
    return max(0, budget - len(own_trials(study, owner)))


def study_space(data: SegData, height: int, width: int) -> SearchSpace:
    return SearchSpace(InputSpec(height=height, width=width, in_channels=data.info.in_channels,
                                 num_classes=data.info.num_classes))


def count_states(study: optuna.Study, owner: str | None = None) -> dict[str, int]:
    counts = dict.fromkeys(COUNTED, 0)
    for t in own_trials(study, owner):
        counts[Status(t.user_attrs[TrialKey.STATUS])] += 1
    return counts
