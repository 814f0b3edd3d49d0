"""References under constraints: a preset (or the --baseline net) that breaks a constraint is still
trained and validated as a yardstick, never enters the front, and presets.csv compares it with the
best feasible net; --baseline makes any ArchSpec of the space such a reference, and --within-baseline
makes its costs the constraints."""
import math

import optuna
import pandas as pd
import pytest
import yaml

from helpers import tiny_spec
from nas import study as st
from nas import validate as val
from nas.baseline import limits, within_baseline
from nas.cli import run as run_cli
from nas.export import main as export_main
from nas.pareto import OBJECTIVES, front_trials
from nas.search import build_parser, config_from_args, main as search_main
from nas.trial import Constraints, TrialSettings, evaluate_trial
from search_spaces import ArchSpec, build_model, load_preset
from trainers.costs import count_gmacs
from trainers.data import load_data

OBJS = (OBJECTIVES["miou"], OBJECTIVES["gmacs"], OBJECTIVES["latency"])
PROTOCOL = val.Protocol(32, 64, 1, (1000, 1001))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTSEG_CACHE", str(tmp_path / "cache"))


# --- the verdict -------------------------------------------------------------------------------
def _table(rows):
    """rows: (trial, preset, state, reason, validated mIoU, GMACs, isolated latency)."""
    cols = ["trial", "preset", "state", "reason", "miou_validated", "gmacs", "latency_ms_isolated"]
    table = pd.DataFrame(rows, columns=cols)
    table["miou_validated_std"] = 0.002
    return table


def test_a_preset_that_breaks_a_constraint_is_compared_with_the_best_feasible_net():
    table = _table([(0, "edanet", "infeasible", "gmacs 0.0347 > 0.01", 0.505, 0.0347, 0.55),
                    (1, "erfnet", "complete", None, 0.400, 0.0050, 0.30),  # feasible: judged as before
                    (4, "", "complete", None, 0.506, 0.0039, 0.24),
                    (5, "", "complete", None, 0.430, 0.0020, 0.20)])
    dom = val.preset_dominance(table, margin=0.01, costs=("gmacs", "latency_ms")).set_index("preset")
    eda = dom.loc["edanet"]
    # trial 4 has the most validated mIoU of the feasible nets, whatever it costs:
    # 0.506 - 0.505 = +0.001 (inside the 0.01 margin); 0.0039 / 0.0347 = 11.2 %; 0.24 / 0.55 = 43.6 %
    assert eda["by_trial"] == 4 and eda["gain"] == pytest.approx(0.001)
    assert eda["verdict"] == ("infeasible under your constraints; best feasible net vs it: trial 4, mIoU 0.506 vs "
                              "0.505 (+0.001, within noise) at 11 % of its GMACs, 44 % of its latency")
    assert eda["violates"] == "gmacs 0.0347 > 0.01"
    # ERFNet keeps its verdict: trial 4 is at <= its GMACs and latency, 0.106 better, beyond 0.01
    assert dom.loc["erfnet", "by_trial"] == 4 and dom.loc["erfnet", "verdict"] == "dominated"
    assert dom.loc["erfnet", "violates"] == ""


def test_a_preset_out_of_bounds_with_no_feasible_net_validated_says_so():
    table = _table([(0, "edanet", "infeasible", "gmacs 0.0347 > 0.001", 0.505, 0.0347, 0.55)])
    row = val.preset_dominance(table, margin=0.01).iloc[0]
    assert row["verdict"] == "infeasible under your constraints; best feasible net vs it: no feasible net validated"
    assert math.isnan(row["gain"]) and row["miou"] == pytest.approx(0.505)


# --- a reference never on the front ----------------------------------------------------------------
def _told(study, preset, status, miou, gmacs, latency):
    trial = study.ask()
    trial.set_user_attr("spec", tiny_spec().to_dict())
    if preset:
        trial.set_user_attr("preset", preset)
    result = {"status": status, "miou": miou, "gmacs": gmacs, "latency_ms": latency, "epoch": 1, "number": trial.number}
    if status == "infeasible":
        result["reason"] = f"gmacs {gmacs} > 0.01"
    st.record_outcome(study, trial, result, False, OBJS)
    return trial.number


def test_a_reference_that_broke_a_constraint_is_validated_but_never_on_the_front():
    study = optuna.create_study(directions=[o.direction for o in OBJS])
    eda = _told(study, "edanet", "infeasible", 0.90, 0.0347, 0.5)  # trained: it beats everything on mIoU
    net = _told(study, "", "complete", 0.50, 0.004, 0.2)
    # Optuna holds it PRUNED: no sampler sees it as a finished result, and the search front lacks it
    assert study.trials[eda].state == optuna.trial.TrialState.PRUNED
    assert [t.number for t in front_trials(study)] == [net]
    assert val.candidates(study, OBJS, noise=0.03, limit=10) == [eda, net]
    for number, mious, latency in ((eda, (0.60, 0.62), 0.5), (net, (0.50, 0.52), 0.2)):
        for seed, m in zip(PROTOCOL.seeds, mious):
            study.set_user_attr(f"validated:{number}:{seed}", {"status": "complete", "miou": m})
        study.set_user_attr(f"isolated:{number}", {"latency_ms": latency, "latency_iqr_ms": 0.01})
    v = val.summarise(study, [eda, net], PROTOCOL, OBJS)
    # validated, EDANet would be on the front (the most mIoU); out of bounds, it is not
    assert v.front == [net]
    assert set(v.table["trial"]) == {eda, net}
    assert v.table.set_index("trial").loc[eda, "miou_validated"] == pytest.approx(0.61)


def test_a_reference_breaking_a_constraint_trains_and_ends_infeasible():
    data = load_data(None, 32, 64, seed=0, n_train=4, n_val=2)
    spec = tiny_spec(height=32, width=64, num_classes=data.info.num_classes)
    settings = TrialSettings(epochs=1, latency_runs=3, latency_backend="torch", constraints=Constraints(max_gmacs=1e-9))
    reports = []
    got = evaluate_trial(spec, data, settings, reference=True, report=reports.append)
    assert got["status"] == "infeasible" and got["epoch"] == 1 and 0 <= got["miou"] <= 1
    assert got["reason"].startswith("gmacs ") and reports[-1]["status"] == "infeasible"
    plain = evaluate_trial(spec, data, settings)  # a searched net out of bounds is not trained
    assert plain["status"] == "infeasible" and plain["epoch"] == 0 and "miou" not in plain


# --- --baseline and --within-baseline ------------------------------------------------------------
def test_within_baseline_the_objectives_costs_are_the_limits_and_the_tighter_flag_wins():
    costs = {"gmacs": 0.05, "latency_ms": 1.0, "latency_iqr_ms": 0.1, "peak_mem_mb": 12.0, "params": 5e5}
    got = limits(costs, OBJS, Constraints())
    # latency: the median plus its interquartile range; memory and parameters are no objectives here
    assert got.max_latency_ms == pytest.approx(1.1) and got.max_gmacs == 0.05
    assert got.max_mem_mb is None and got.max_params is None
    assert limits(costs, OBJS, Constraints(max_gmacs=0.01)).max_gmacs == 0.01
    assert limits(costs, OBJS, Constraints(max_gmacs=0.5)).max_gmacs == 0.05
    assert limits(costs, OBJS, Constraints(max_params=1e5)).max_params == 1e5


def _preset_yaml(tmp_path, name="edanet", height=64, width=128, classes=19):
    path = tmp_path / f"{name}.yaml"
    load_preset(name, height, width, classes).to_yaml(path)
    return path


def _config(tmp_path, *extra):
    return config_from_args(build_parser().parse_args(
        ["--size", "32x64", "--out", str(tmp_path), "--study", "b", "--objectives", "miou,gmacs", *extra]))


def test_within_baseline_measures_its_gmacs_at_the_deploy_size_of_the_study(tmp_path):
    path = _preset_yaml(tmp_path)  # saved at 64x128 and 19 classes: the study rebuilds it at its own input
    data = load_data(None, 32, 64, seed=0, n_train=4, n_val=2)
    space = st.study_space(data, 32, 64)
    fast = ("--latency-backend", "torch")  # latency is not limited here; it is timed all the same
    cfg = within_baseline(_config(tmp_path, "--baseline", str(path), "--within-baseline", "--deploy-size", "64x64", *fast),
                          space)
    want = load_preset("edanet", 64, 64, data.info.num_classes)
    assert cfg.settings.constraints.max_gmacs == pytest.approx(count_gmacs(build_model(want), want), rel=1e-9)
    assert cfg.settings.constraints.max_latency_ms is None  # latency is not an objective of this search
    # tighter wins: a --max-gmacs below EDANet's stays
    tight = within_baseline(_config(tmp_path, "--baseline", str(path), "--within-baseline", "--max-gmacs", "0.001", *fast),
                            space)
    assert tight.settings.constraints.max_gmacs == 0.001


def test_the_baseline_is_recorded_in_the_trial_meaning_only_when_given(tmp_path):
    data = load_data(None, 32, 64, seed=0, n_train=4, n_val=2)
    plain = _config(tmp_path, "--max-gmacs", "0.02").trial_meaning(data)
    assert "baseline" not in plain and plain["constraints"] == "max_gmacs <= 0.02"
    path = _preset_yaml(tmp_path)
    given = _config(tmp_path, "--max-gmacs", "0.02", "--baseline", str(path), "--within-baseline").trial_meaning(data)
    assert given["baseline"] == f"{path.resolve()} (edanet)"
    assert given["constraints"] == "max_gmacs <= 0.02, the baseline's costs"
    assert {k: v for k, v in given.items() if k not in ("baseline", "constraints")} == \
        {k: v for k, v in plain.items() if k != "constraints"}


def test_the_baseline_is_queued_first_at_the_study_input_and_once(tmp_path):
    cfg = _config(tmp_path, "--baseline", str(_preset_yaml(tmp_path, "lednet")))
    data = load_data(None, 32, 64, seed=0, n_train=4, n_val=2)
    space = st.study_space(data, 32, 64)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for _ in range(2):  # a resumed search queues nothing twice
        st.enqueue_baseline(study, space, cfg.meaning.baseline)
        st.enqueue_presets(study, space)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["preset"] for t in waiting] == ["baseline:lednet", "erfnet", "edanet", "esnet", "lednet"]
    first = study.ask()  # as the searcher asks: the baseline, rebuilt at the study's input
    want = load_preset("lednet", 32, 64, data.info.num_classes)
    assert first.user_attrs["preset"] == "baseline:lednet"
    assert space.sample(first) == ArchSpec.from_dict({**want.to_dict(), "name": ""})


@pytest.mark.parametrize("content, problem", [
    (None, "no such file"),
    ("stages: [1, 2\n", "not an ArchSpec YAML"),
    ("stages: 3\n", "not an ArchSpec YAML"),
    (yaml.safe_dump(tiny_spec().to_dict()), "not a net of the search space"),  # widths 8/12/16: off the space
])
def test_a_bad_baseline_is_one_line_naming_the_file(tmp_path, capsys, content, problem):
    path = tmp_path / "mine.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as exit_:
        run_cli(search_main, ["--baseline", str(path), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: --baseline {path}: {problem}")


def test_within_baseline_needs_a_baseline(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(search_main, ["--within-baseline", "--out", str(tmp_path)])
    assert capsys.readouterr().err.startswith("error: --within-baseline: needs --baseline")


# --- end to end: the user's two questions -----------------------------------------------------------
SMALL = ["--epochs", "1", "--val-epochs", "1", "--val-seeds", "2", "--size", "32x64", "--seed", "3"]


@pytest.mark.slow
def test_presets_stay_the_yardstick_and_an_exported_trial_is_a_baseline(tmp_path):
    # 1. every preset out of bounds: 0.01 GMACs at 32x64 is below the cheapest preset (EDANet, 0.035)
    assert search_main(["--budget", "6", "--max-gmacs", "0.01", "--out", str(tmp_path), "--study", "capped", *SMALL]) == 0
    run = tmp_path / "capped"
    presets = pd.read_csv(run / "presets.csv").set_index("preset")
    assert sorted(presets.index) == ["edanet", "erfnet", "esnet", "lednet"]
    assert presets["miou"].between(0, 1).all() and presets["violates"].str.startswith("gmacs ").all()
    assert presets["verdict"].str.startswith("infeasible under your constraints; best feasible net vs it: ").all()
    trials = pd.read_csv(run / "trials.csv")
    refs = trials[trials["preset"].notna()]
    assert (refs["state"] == "infeasible").all() and refs["miou"].notna().all()  # trained all the same
    assert not set(refs["trial"]) & set(pd.read_csv(run / "pareto.csv")["trial"])
    assert "infeasible under your constraints" in (run / "report.html").read_text()

    # 2. export EDANet's trial and search within its costs: "beat my net at <= its cost"
    eda = int(refs.loc[refs["preset"] == "edanet", "trial"].iloc[0])
    mine = tmp_path / "mine.yaml"
    assert export_main(["--run", str(run), "--trial", str(eda), "--out", str(mine)]) == 0
    assert search_main(["--budget", "3", "--no-presets", "--baseline", str(mine), "--within-baseline",
                        "--objectives", "miou,gmacs", "--out", str(tmp_path), "--study", "within", *SMALL]) == 0
    run = tmp_path / "within"
    trials = pd.read_csv(run / "trials.csv").set_index("trial")
    base = trials.loc[0]  # queued first
    assert base["preset"] == "baseline:mine" and base["state"] == "complete"  # at its own cost: feasible
    limit = yaml.safe_load((run / "config.yaml").read_text())["settings"]["constraints"]["max_gmacs"]
    assert limit == pytest.approx(base["gmacs"], rel=1e-9)
    searched = trials.drop(index=0)
    assert ((searched["state"] == "infeasible") == (searched["gmacs"] > limit)).all()
    row = pd.read_csv(run / "presets.csv").set_index("preset").loc["baseline:mine"]
    assert 0 <= row["miou"] <= 1 and isinstance(row["verdict"], str)
