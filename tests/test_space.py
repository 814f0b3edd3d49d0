"""The search space: one declaration; sampling, decoding and membership derive from it."""
import optuna
import pytest
import torch

from search_spaces import ArchSpec, InputSpec, SpecError, build_model
from search_spaces.space import PARAMS, SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = SearchSpace(InputSpec(height=32, width=64, num_classes=5))


def sampled(n, seed):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((SPACE.sample(trial), SPACE.active_values(trial.params)))
        study.tell(trial, 0.0)
    return out


def test_200_sampled_specs_are_valid_and_round_trip_through_yaml():
    for spec, params in sampled(200, seed=1):
        assert SPACE.contains(params)
        assert ArchSpec.from_yaml_text(spec.to_yaml()) == spec


def test_sampled_specs_build_and_run():
    for spec, _ in sampled(30, seed=2):
        model = build_model(spec).eval()
        with torch.inference_mode():
            assert model(torch.randn(1, 3, 32, 64)).shape == (1, 5, 32, 64), spec.tag()


def test_same_seed_same_specs_different_seed_different():
    a, b, c = sampled(10, 7), sampled(10, 7), sampled(10, 8)
    assert [p for _, p in a] == [p for _, p in b]
    assert [p for _, p in a] != [p for _, p in c]


def test_fixed_trial_replays_params_through_the_same_code():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask()
    spec = SPACE.sample(trial)
    assert SPACE.sample(optuna.trial.FixedTrial(trial.params)) == spec


def test_decode_rejects_params_outside_the_space():
    _, params = sampled(1, seed=4)[0]
    bad = dict(params, ratio=3)
    assert not SPACE.contains(bad)
    with pytest.raises(SpecError, match="ratio"):
        SPACE.decode(bad)
    assert not SPACE.contains(dict(params, unknown=1))


def test_conditional_parameters_and_distributions():
    for spec, params in sampled(50, seed=5):
        assert ("decoder.erfnet_blocks" in params) == (spec.decoder.kind == "erfnet")
        for i, st in enumerate(spec.stages, 1):
            assert (f"stage{i}.growth" in params) == (st.core == "eda")
        assert set(SPACE.distributions(params)) == set(params)


def test_sampling_is_flat_so_every_trial_has_the_same_search_space():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=6))
    for _ in range(20):
        trial = study.ask()
        spec = SPACE.sample(trial)
        assert set(trial.params) == {p.name for p in PARAMS}  # inactive ones included, then ignored
        assert SPACE.decode(SPACE.active_values(trial.params)) == spec
        study.tell(trial, 0.0)


def test_description_lists_every_parameter_once():
    text = SPACE.describe()
    names = [p.name for p in PARAMS]
    assert len(set(names)) == len(names)
    for name in names:
        assert name in text


@pytest.mark.parametrize("name", ["erfnet", "edanet", "esnet", "lednet"])
def test_every_preset_is_a_point_of_the_space(name):
    from search_spaces import load_preset
    spec = load_preset(name, height=32, width=64, num_classes=5)
    params = SPACE.encode(spec)
    assert SPACE.contains(params)
    assert SPACE.decode(params) == spec.__class__(**{**spec.__dict__, "name": ""})


def test_encode_refuses_specs_outside_the_space():
    from search_spaces import load_preset
    import dataclasses
    spec = load_preset("erfnet", height=32, width=64, num_classes=5)
    odd = dataclasses.replace(spec, stages=(dataclasses.replace(spec.stages[0], width=17),) + spec.stages[1:])
    with pytest.raises(SpecError, match="stage1.width"):
        SPACE.encode(odd)
