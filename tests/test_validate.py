"""The validated final stage: which trials are validated, the front and best.yaml from validated values,
the isolated latency in place of the in-trial one, and a kill during validation losing nothing."""
import math

import optuna
import pandas as pd
import pytest
import yaml

from helpers import tiny_spec
from nas import validate as val, validated_stage
from nas.pareto import OBJECTIVES
from nas.report import write_results
from nas.search import search
from search_spaces import ArchSpec

from test_search import make_config

OBJS = (OBJECTIVES["miou"], OBJECTIVES["gmacs"], OBJECTIVES["latency"])
PROTOCOL = val.Protocol(32, 32, 1, (1000, 1001))


def _study(rows):
    """rows: (miou, gmacs, latency_ms, preset) of complete trials, numbered in order."""
    study = optuna.create_study(directions=[o.direction for o in OBJS])
    for i, (miou, gmacs, latency, preset) in enumerate(rows):
        t = study.ask()
        spec = tiny_spec(width=32 + 32 * i)  # a distinct spec per trial, to tell the YAMLs apart
        attrs = {"status": "complete", "spec": spec.to_dict(), "miou": miou, "gmacs": gmacs, "latency_ms": latency,
                 "peak_mem_mb": 1.0, "params": 1000}
        if preset:
            attrs["preset"] = preset
        for k, v in attrs.items():
            t.set_user_attr(k, v)
        study.tell(t, [miou, gmacs, latency])
    return study


def _validate(study, number, mious, latency):
    for seed, m in zip(PROTOCOL.seeds, mious):
        study.set_user_attr(f"validated:{number}:{seed}", {"status": "complete", "miou": m})
    study.set_user_attr(f"isolated:{number}", {"latency_ms": latency, "latency_iqr_ms": 0.1})


SEARCH = [(0.50, 1.0, 10.0, "erfnet"),  # 0 preset, dominated in the search
          (0.60, 0.5, 5.0, ""),  # 1 front
          (0.58, 0.4, 4.0, ""),  # 2 front
          (0.57, 0.45, 4.5, ""),  # 3 dominated by 2 by 0.01 mIoU: within noise
          (0.40, 0.45, 4.5, "")]  # 4 dominated by 2 by 0.18: far outside


def test_candidates_are_presets_front_and_trials_within_noise():
    study = _study(SEARCH)
    assert val.candidates(study, OBJS, noise=0.03, limit=10) == [0, 1, 2, 3]
    assert val.candidates(study, OBJS, noise=0.0, limit=10) == [0, 1, 2]
    assert val.candidates(study, OBJS, noise=0.03, limit=2) == [0, 1, 2]  # the front first


def test_a_capped_validation_spans_the_front_by_crowding():
    # five searched nets on one front, on a line from accurate-and-costly to cheap at positions
    # 0, 1, 2, 4, 8 (of 8): the two ends come first (infinite crowding), then by the gap between
    # each one's neighbours: trial 4 (8 - 2 = 6), trial 3 (4 - 1 = 3), trial 2 (2 - 0 = 2)
    line = [(0.60 - 0.05 * i, 1.0 - 0.1 * i, 10.0 - i, "") for i in (0, 1, 2, 4, 8)]
    study = _study([(0.3, 2.0, 20.0, "erfnet")] + line)
    assert val.candidates(study, OBJS, noise=0.0, limit=2) == [0, 1, 5]
    assert val.candidates(study, OBJS, noise=0.0, limit=5) == [0, 1, 5, 4, 3, 2]


def test_front_and_best_come_from_validated_values_and_isolated_latency(tmp_path):
    study = _study(SEARCH)
    _validate(study, 0, (0.57, 0.59), 9.0)
    _validate(study, 1, (0.55, 0.57), 5.2)  # search front, validated below trial 3 at more cost: off
    _validate(study, 2, (0.61, 0.63), 4.1)
    _validate(study, 3, (0.64, 0.66), 3.9)  # dominated in the search, best once validated
    v = val.summarise(study, [0, 1, 2, 3], PROTOCOL, OBJS)
    assert v.front == [2, 3]  # 3 beats 1 everywhere; 2 is cheaper in GMACs than 3
    sd = math.sqrt(0.02 ** 2 / 2)  # each net's two seeds are 0.02 apart: sample sd 0.01414
    assert v.seed_sd == pytest.approx(sd)
    assert v.mean_seed_gap == pytest.approx(0.02)
    assert v.margin == pytest.approx(2 * sd)  # 2 sd * sqrt(2 / 2 seeds)
    # search order 1 > 2 > 3 > 0, validated 3 > 2 > 0 > 1: concordant (0,2), (0,3); the other 4
    # pairs discordant -> tau = (2 - 4) / 6
    assert v.kendall_tau == pytest.approx(-1 / 3)
    config = {"study": "t", "height": 32, "width": 32, "settings": {"epochs": 1}}
    write_results(tmp_path, study, OBJS, {"gmacs": 2.0, "latency_ms": 20.0}, config, "miou", v)
    front = pd.read_csv(tmp_path / "pareto.csv").set_index("trial")
    assert sorted(front.index) == [2, 3]
    assert front.loc[3, "miou"] == pytest.approx(0.65) and front.loc[3, "miou_search"] == pytest.approx(0.57)
    assert front.loc[3, "miou_std"] == pytest.approx(sd)
    assert front.loc[3, "latency_ms"] == pytest.approx(3.9) and front.loc[3, "latency_ms_search"] == pytest.approx(4.5)
    assert sorted(p.name for p in (tmp_path / "pareto").glob("*.yaml")) == ["trial_0002.yaml", "trial_0003.yaml"]
    best = ArchSpec.from_yaml(tmp_path / "best.yaml")
    assert best.input.width == 32 + 32 * 3  # --pick miou on validated means: trial 3, not trial 1
    trials = pd.read_csv(tmp_path / "trials.csv").set_index("trial")
    assert trials.loc[1, "miou"] == pytest.approx(0.60) and trials.loc[1, "miou_validated"] == pytest.approx(0.56)
    assert math.isnan(trials.loc[4, "miou_validated"])  # never validated
    html = (tmp_path / "report.html").read_text()
    assert "Kendall tau -0.33" in html and "indistinguishable" in html


def test_preset_dominance_counts_only_margins_beyond_the_noise():
    study = _study(SEARCH)
    _validate(study, 0, (0.60, 0.62), 9.0)
    _validate(study, 2, (0.62, 0.64), 4.1)
    table = pd.DataFrame({"trial": [0, 2], "preset": ["erfnet", ""], "gmacs": [1.0, 0.4]}).merge(
        val.validated_values(study, [0, 2], PROTOCOL), on="trial")
    dom = val.preset_dominance(table, margin=0.05).iloc[0]
    assert dom["by_trial"] == 2 and dom["gain"] == pytest.approx(0.02)
    assert dom["verdict"] == "dominated within noise"
    assert val.preset_dominance(table, margin=0.01).iloc[0]["verdict"] == "dominated"


def test_a_kill_during_validation_loses_no_finished_training_and_counts_none_twice(tmp_path, monkeypatch):
    cfg = make_config(tmp_path, "--no-early-stopping", "--no-presets", "--budget", "3")
    real = validated_stage.run_trainings
    first_jobs, resumed_jobs = [], []

    def killed_after_two(cfg_, jobs, data_ref, protocol, record, fits, *beside):
        first_jobs.extend(jobs)

        def record_then_die(job, result):
            record(job, result)
            if len([k for k in study_attrs() if k.startswith("validated:")]) == 2:
                raise KeyboardInterrupt  # what Ctrl-C (or SIGTERM) does; SIGKILL loses the same or less
        real(cfg_, jobs, data_ref, protocol, record_then_die, fits, *beside)

    def study_attrs():
        return optuna.load_study(study_name=cfg.study, storage=cfg.storage_url).user_attrs

    monkeypatch.setattr(validated_stage, "run_trainings", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        search(cfg)
    before = {k: v for k, v in study_attrs().items() if k.startswith("validated:")}
    assert len(before) == 2

    def counting(cfg_, jobs, data_ref, protocol, record, fits, *beside):
        resumed_jobs.extend(jobs)
        real(cfg_, jobs, data_ref, protocol, record, fits, *beside)

    monkeypatch.setattr(validated_stage, "run_trainings", counting)
    chosen = []
    monkeypatch.setattr(val, "candidates", lambda *a, choose=val.candidates: chosen.append(1) or choose(*a))
    assert search(cfg.replace(resume=True)) == 0
    assert len(chosen) == 1  # the trainings and the summary use one choice of candidates
    after = {k: v for k, v in study_attrs().items() if k.startswith("validated:")}
    assert {k: after[k] for k in before} == before  # kept, not retrained
    assert len(resumed_jobs) == len(first_jobs) - 2
    assert {j.key for j in resumed_jobs}.isdisjoint(before)
    assert set(after) == {j.key for j in first_jobs}
    trials = pd.read_csv(cfg.run_dir / "trials.csv")
    assert (trials["validated_seeds"].fillna(0) <= 2).all() and len(trials) == 3
    config = yaml.safe_load((cfg.run_dir / "config.yaml").read_text())
    assert config["val_epochs"] == 1
