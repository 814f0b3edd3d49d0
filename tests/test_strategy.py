"""Search strategies: the own local-search sampler is deterministic and only proposes valid specs;
the model-based samplers see every parameter (the conditional ones too) and never fall back to
random sampling for them."""
import warnings

import numpy as np
import optuna
import pytest

from nas.pareto import parse_objectives
from nas.records import StudyKey
from nas.strategy import FrontLocalSampler, features
from nas.study import make_sampler
from search_spaces import InputSpec
from search_spaces.space import PARAMS, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = SearchSpace(InputSpec(height=32, width=64, num_classes=5))
OBJECTIVES = parse_objectives("miou,gmacs,latency,memory")
ALL = {p.name for p in PARAMS}


def fake_outcome(params: dict) -> list[float]:
    """A smooth stand-in for training and measuring: mIoU and log-costs linear in the parameters."""
    f = features(params)
    w = np.random.default_rng(0).normal(size=(2, len(f)))
    cost = float(np.exp(0.3 * f @ w[0]))
    return [float(1 / (1 + np.exp(-0.2 * f @ w[1]))), 0.01 * cost, 0.5 * cost, 3.0 * cost]


def run(sampler, n: int, on_ask=None, stop_every: int = 0, scales: dict | None = None) -> list[dict]:
    """A synthetic study of `n` trials sampled through the search space, as the search samples them;
    with `stop_every` k, every k-th trial is early-stopped after 1 epoch (told PRUNED, its short
    training's lower mIoU kept), as successive halving does. `scales`: the study's hypervolume
    reference, where the sampler reads it."""
    study = optuna.create_study(directions=[o.direction for o in OBJECTIVES], sampler=sampler)
    if scales:
        study.set_user_attr(StudyKey.HYPERVOLUME_SCALES, scales)
    proposals = []
    for i in range(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = study.ask()
        if on_ask:
            on_ask(i)
        SPACE.sample(trial)
        values = fake_outcome(trial.params)
        for o, v in zip(OBJECTIVES, values):
            trial.set_user_attr(o.key, v)
        trial.set_user_attr("status", "complete")
        if stop_every and i % stop_every == stop_every - 1:
            trial.set_user_attr("status", "stopped")
            trial.set_user_attr("epochs", 1)
            trial.set_user_attr("miou", values[0] - 0.2)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, values)
        proposals.append(dict(trial.params))
    return proposals


def test_local_sampler_same_seed_same_proposals_other_seed_other():
    a = run(FrontLocalSampler(OBJECTIVES, seed=3), 30, stop_every=3)
    b = run(FrontLocalSampler(OBJECTIVES, seed=3), 30, stop_every=3)
    c = run(FrontLocalSampler(OBJECTIVES, seed=4), 30, stop_every=3)
    assert a == b
    assert a[10:] != c[10:]


def test_local_sampler_proposes_only_valid_specs():
    # Start-up is 6 complete trials, so ~290 of these come from mutations and screening;
    # half are early-stopped, so the mIoU model mixes both kinds of trial.
    proposals = run(FrontLocalSampler(OBJECTIVES, seed=0, candidates=16), 300, stop_every=2)
    keys = set()
    for params in proposals:
        assert set(params) == ALL
        active = SPACE.active_values(params)
        assert SPACE.contains(active)
        SPACE.decode(active)  # raises on an invalid spec
        keys.add(tuple(sorted(active.items())))
    assert len(keys) == len(proposals)  # never the same architecture twice


def test_local_sampler_mutates_front_members_by_one_or_two_parameters():
    sampler = FrontLocalSampler(OBJECTIVES, seed=1)
    rng = np.random.default_rng(0)
    parent = sampler.random_point(rng)
    for _ in range(200):
        child = sampler.mutate(parent, rng)
        changed = [k for k in ALL if child[k] != parent[k]]
        assert 1 <= len(changed) <= 2
        assert SPACE.contains(SPACE.active_values(child))


def test_nsga2_population_is_sized_to_the_budget():
    assert make_sampler("nsga2", 0, budget=100)._population_size == 20
    assert make_sampler("nsga2", 0, budget=20)._population_size == 8
    assert make_sampler("nsga2", 0, budget=1000)._population_size == 50


@pytest.mark.parametrize("name,startup", [("tpe", 12), ("gp", 10)])
def test_model_based_samplers_never_sample_a_parameter_at_random_after_startup(name, startup):
    sampler = make_sampler(name, 0, budget=20, objectives=OBJECTIVES)
    calls = []
    independent = sampler.sample_independent
    current = {"i": 0}

    def counting(study, trial, param_name, distribution):
        if current["i"] >= startup:
            calls.append(param_name)
        return independent(study, trial, param_name, distribution)

    sampler.sample_independent = counting
    run(sampler, startup + 2, on_ask=lambda i: current.update(i=i))
    assert calls == []  # the conditional parameters (growth, decoder widths) included


def test_nsga2_breeds_every_parameter():
    sampler = make_sampler("nsga2", 0, budget=20, objectives=OBJECTIVES)
    study = optuna.create_study(directions=[o.direction for o in OBJECTIVES], sampler=sampler)
    for _ in range(3):
        trial = study.ask()
        SPACE.sample(trial)
        study.tell(trial, fake_outcome(trial.params))
    assert set(sampler.infer_relative_search_space(study, study.ask())) == ALL


def test_local_sampler_learns_mIoU_from_early_stopped_trials():
    """Early-stopped trials (their 1-epoch mIoU a constant below the trained one, as a short
    training's level is lower) must sharpen the mIoU model, not bias it: with them, predictions
    on new points rank closer to the truth than from the fully trained trials alone."""
    from scipy.stats import spearmanr
    from optuna.trial import TrialState, create_trial

    rng = np.random.default_rng(5)
    sampler = FrontLocalSampler(OBJECTIVES, seed=0)
    distributions = {p.name: optuna.distributions.CategoricalDistribution(
        list(range(p.low, p.high + 1)) if hasattr(p, "low") else p.choices) for p in PARAMS}

    def trial(stopped: bool):
        params = sampler.random_point(rng)
        values = fake_outcome(params)
        attrs = {o.key: v for o, v in zip(OBJECTIVES, values)}
        if stopped:
            attrs.update(status="stopped", epochs=1, miou=values[0] - 0.2)
            return create_trial(state=TrialState.PRUNED, params=params, distributions=distributions, user_attrs=attrs)
        attrs.update(status="complete", epochs=3)
        return create_trial(values=values, params=params, distributions=distributions, user_attrs=attrs)

    full, stopped = [trial(False) for _ in range(10)], [trial(True) for _ in range(40)]
    new = [sampler.random_point(rng) for _ in range(200)]
    truth = [1 - fake_outcome(p)[0] for p in new]
    x = np.array([features(p) for p in new])
    scales = {o.key: 1.0 for o in OBJECTIVES}

    def rank_agreement(history):
        study = optuna.create_study(directions=[o.direction for o in OBJECTIVES])
        study.add_trials(history)  # stored, so each has its own id, as in a search
        return spearmanr(FrontLocalSampler(OBJECTIVES)._fit(study.trials, scales)["miou"].predict(x), truth)[0]

    alone, with_stopped = rank_agreement(full), rank_agreement(full + stopped)
    assert with_stopped > alone + 0.2, (alone, with_stopped)
    assert with_stopped > 0.5
