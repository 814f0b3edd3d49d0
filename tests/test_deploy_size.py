"""--deploy-size: costs are those of the net built at the deployment size; a study keeps its size."""
import json

import optuna
import pytest

from nas import study as st
from nas import validate as val
from nas.cli import run as run_cli
from nas.pareto import parse_objectives
from nas.search import main as search_main
from nas.trial import Constraints, TrialSettings, evaluate_trial
from search_spaces import build_model, load_preset
from search_spaces.blocks import TVConv
from search_spaces.blocks.tvconv import AFFINITY_CHANNELS
from search_spaces.presets import PRESET_NAMES
from trainers.costs import count_gmacs, measure_costs
from trainers.data import load_data

from helpers import tiny_spec
from test_search import make_config

DEPLOY = (64, 128)
NEVER = 1e-9  # a GMACs cap no net meets: the trial reports its costs and trains nothing


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTSEG_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def data():
    return load_data(None, 32, 64, seed=0, n_train=4, n_val=2)


def _costs(spec, data, deploy_size, max_gmacs=NEVER):
    settings = TrialSettings(latency_runs=3, deploy_size=deploy_size, constraints=Constraints(max_gmacs=max_gmacs))
    return evaluate_trial(spec, data, settings)


def test_trial_costs_are_those_of_the_net_built_at_the_deploy_size(data):
    spec = tiny_spec(tvconv_from=1, height=32, width=64, num_classes=data.info.num_classes)
    got = _costs(spec, data, DEPLOY)
    assert got["status"] == "infeasible"
    want = measure_costs(spec.with_input(height=DEPLOY[0], width=DEPLOY[1]), runs=3, backend="onnxruntime")
    for key in ("gmacs", "params", "params_deployed", "peak_mem_mb"):
        assert got[key] == pytest.approx(getattr(want, key), rel=1e-9), key
    at_size = _costs(spec, data, None)
    assert at_size["gmacs"] < got["gmacs"] and at_size["peak_mem_mb"] < got["peak_mem_mb"]


def test_plain_conv_gmacs_scale_by_the_pixel_ratio(data):
    spec = tiny_spec(height=32, width=64, num_classes=data.info.num_classes)
    small = count_gmacs(build_model(spec), spec)
    assert _costs(spec, data, DEPLOY)["gmacs"] == pytest.approx(4 * small, rel=1e-6)


def test_constraints_apply_to_the_deployment_figures(data):
    spec = tiny_spec(height=32, width=64, num_classes=data.info.num_classes)
    small = count_gmacs(build_model(spec), spec)
    # a cap the training-size net meets and the deployed one (4x the pixels) does not
    got = _costs(spec, data, DEPLOY, max_gmacs=2 * small)
    assert got["status"] == "infeasible" and got["reason"].startswith(f"gmacs {got['gmacs']:.4g} >")


def test_tvconv_deployed_params_scale_with_its_maps():
    spec = tiny_spec(tvconv_from=1, height=32, width=64)
    big = spec.with_input(height=DEPLOY[0], width=DEPLOY[1])
    small_m, big_m = build_model(spec), build_model(big)
    tv_small = [m for m in small_m.modules() if isinstance(m, TVConv)]
    tv_big = [m for m in big_m.modules() if isinstance(m, TVConv)]
    assert tv_small and [(2 * m.size[0], 2 * m.size[1]) for m in tv_small] == [m.size for m in tv_big]
    s, b = measure_costs(spec, runs=3), measure_costs(big, runs=3)
    kernels = sum(m.channels * m.kernel**2 * m.size[0] * m.size[1] for m in tv_small)
    maps = sum(AFFINITY_CHANNELS * m.size[0] * m.size[1] for m in tv_small)
    assert b.params_deployed - s.params_deployed == 3 * kernels  # cached kernels: one per pixel
    assert b.params - s.params == 3 * maps  # trainable affinity maps: one per pixel


def test_settings_round_trip_with_a_deploy_size():
    settings = TrialSettings(deploy_size=DEPLOY)
    assert TrialSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    assert TrialSettings.from_dict(TrialSettings().to_dict()).deploy_size is None
    old = TrialSettings().to_dict()
    del old["deploy_size"]  # settings written before the field existed
    assert TrialSettings.from_dict(old).deploy_size is None


def test_the_flag_defaults_to_the_size_and_is_checked(tmp_path, capsys):
    cfg = make_config(tmp_path)
    assert cfg.settings.deploy_size is None and cfg.deploy_label == "32x32"
    assert make_config(tmp_path, "--deploy-size", "32x32").settings.deploy_size is None
    cfg = make_config(tmp_path, "--deploy-size", "64x128")
    assert cfg.settings.deploy_size == (64, 128) and cfg.to_dict()["deploy_size"] == "64x128"
    for bad, message in (("33x64", "--deploy-size 33x64: height and width must be multiples of 32"),
                         ("big", "--deploy-size 'big': expected HxW")):
        with pytest.raises(SystemExit) as exit_:
            run_cli(search_main, ["--deploy-size", bad, "--out", str(tmp_path)])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_reference_scales_are_at_the_deploy_size(data):
    space = st.study_space(data, 32, 64)
    settings = TrialSettings(latency_backend="torch", deploy_size=DEPLOY)
    scales = st.reference_scales(space, parse_objectives("miou,gmacs"), settings)
    inp = space.input
    big = [load_preset(n, *DEPLOY, inp.num_classes, inp.in_channels) for n in PRESET_NAMES]
    assert scales["gmacs"] == pytest.approx(2 * max(count_gmacs(build_model(p), p) for p in big), rel=1e-9)


def test_isolated_latency_is_measured_at_the_deploy_size():
    study = optuna.create_study(directions=["maximize"])
    trial = study.ask()
    trial.set_user_attr("spec", tiny_spec(height=32, width=64).to_dict())
    study.tell(trial, 0.5)
    pending = val.isolated_latency_pending(study, [trial.number], TrialSettings(deploy_size=DEPLOY))
    assert [(s["input"]["height"], s["input"]["width"]) for s in pending.values()] == [DEPLOY]


def _meaning_recorded(cfg, data, drop_deploy=False):
    with st.locked_run_dir(cfg):
        study = st.open_study(cfg)
        st.check_resumable(study, cfg, data)
        if drop_deploy:  # a study written before --deploy-size existed
            meaning = dict(study.user_attrs["trial_meaning"])
            del meaning["deploy size"]
            study.set_user_attr("trial_meaning", meaning)


def test_resume_with_another_deploy_size_is_refused(tmp_path, capsys):
    data = load_data(None, 32, 32, seed=1)
    _meaning_recorded(make_config(tmp_path, "--deploy-size", "64x64"), data)
    argv = ["--budget", "7", "--epochs", "1", "--size", "32x32", "--out", str(tmp_path), "--study", "tiny", "--seed", "1",
            "--val-size", "32x32", "--val-epochs", "1", "--resume", "--deploy-size", "128x128"]
    with pytest.raises(SystemExit) as exit_:
        run_cli(search_main, argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "deploy size: 64x64 then, 128x128 now" in err
    same = make_config(tmp_path, "--deploy-size", "64x64").replace(resume=True)
    with st.locked_run_dir(same):
        st.check_resumable(st.open_study(same), same, data)


def test_a_study_from_before_the_flag_resumes_at_its_size_only(tmp_path):
    data = load_data(None, 32, 32, seed=1)
    _meaning_recorded(make_config(tmp_path), data, drop_deploy=True)
    same = make_config(tmp_path).replace(resume=True)
    with st.locked_run_dir(same):
        st.check_resumable(st.open_study(same), same, data)  # costs were at the size: the default matches
    other = make_config(tmp_path, "--deploy-size", "64x64").replace(resume=True)
    with st.locked_run_dir(other), pytest.raises(st.RunFolderError, match="deploy size: 32x32 then, 64x64 now"):
        st.check_resumable(st.open_study(other), other, data)
