"""A tiny end-to-end search: every output, exact budget, faithful front, faults, constraints, resume."""
import dataclasses

import optuna
import pandas as pd
import pytest

from nas.search import build_parser, config_from_args, search
from nas.study import open_study, RunFolderError
from nas.trial import FaultPlan
from search_spaces import ArchSpec, build_model
from trainers.costs import count_gmacs

BUDGET = 7


def make_config(tmp_path, *extra, faults=FaultPlan()):
    args = build_parser().parse_args(["--budget", str(BUDGET), "--epochs", "1", "--size", "32x32", "--out", str(tmp_path),
                                      "--study", "tiny", "--seed", "1", "--val-size", "32x32", "--val-epochs", "1", *extra])
    cfg = config_from_args(args)
    return cfg.replace(settings=dataclasses.replace(cfg.settings, faults=faults, latency_runs=5))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import os
    os.environ["LIGHTSEG_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    out = tmp_path_factory.mktemp("runs")
    # trial 5 raises; a GMACs cap between the presets' costs makes some trials infeasible
    cfg = make_config(out, "--max-gmacs", "0.02", faults=FaultPlan(raise_at=(5,)))
    assert search(cfg) == 0
    return cfg


def test_every_output_is_written(run):
    d = run.run_dir
    for name in ("trials.csv", "pareto.csv", "best.yaml", "config.yaml", "report.html", "hypervolume.png",
                 "pareto_gmacs.png", "pareto_latency.png", "pareto_memory.png", "study.db"):
        assert (d / name).stat().st_size > 0, name
    assert "data:image/png;base64" in (d / "report.html").read_text()


def test_trials_csv_has_exactly_budget_rows_with_every_field(run):
    table = pd.read_csv(run.run_dir / "trials.csv")
    assert len(table) == BUDGET and table["trial"].is_unique
    for col in ("state", "miou", "gmacs", "latency_ms", "peak_mem_mb", "params", "train_seconds", "device", "reason",
                "ratio", "stages[0].core", "stages[2].dilations", "decoder.kind"):
        assert col in table.columns, col
    assert set(table["preset"].dropna()) == {"erfnet", "edanet", "esnet", "lednet"}


def test_a_raising_trial_is_a_failed_row(run):
    table = pd.read_csv(run.run_dir / "trials.csv").set_index("trial")
    assert table.loc[5, "state"] == "failed" and "injected fault" in table.loc[5, "reason"]


def test_infeasible_trials_never_sit_on_the_front(run):
    table = pd.read_csv(run.run_dir / "trials.csv")
    front = pd.read_csv(run.run_dir / "pareto.csv")
    infeasible = table[table["state"] == "infeasible"]
    assert len(infeasible) >= 1 and (infeasible["gmacs"] > 0.02).all()
    assert infeasible["reason"].str.contains("gmacs").all()
    assert not set(infeasible["trial"]) & set(front["trial"])
    assert (front["state"] == "complete").all() and (front["gmacs"] <= 0.02).all()


def test_front_yamls_rebuild_with_the_csv_gmacs(run):
    front = pd.read_csv(run.run_dir / "pareto.csv").set_index("trial")
    files = sorted((run.run_dir / "pareto").glob("*.yaml"))
    assert len(files) == len(front) >= 1
    for f in files:
        spec = ArchSpec.from_yaml(f)
        number = int(f.stem.split("_")[1])
        assert count_gmacs(build_model(spec), spec) == pytest.approx(front.loc[number, "gmacs"], rel=1e-9)
    ArchSpec.from_yaml(run.run_dir / "best.yaml")


def test_existing_run_folder_is_refused_without_resume_or_force(run):
    with pytest.raises(RunFolderError, match="--resume"):
        search(run.replace(resume=False))


def test_interrupted_search_resumes_to_exactly_budget(tmp_path):
    cfg = make_config(tmp_path, "--no-presets", "--no-early-stopping")
    search(cfg.replace(budget=3))
    # a driver killed mid-trial leaves a RUNNING trial behind: simulate one
    study = open_study(cfg)
    study.sampler = optuna.samplers.RandomSampler(seed=999)
    stale = study.ask()
    from nas.study import study_space
    from trainers.data import load_data
    space = study_space(load_data(None, 32, 32), 32, 32)
    stale_spec = space.sample(stale)
    resumed = cfg.replace(resume=True)
    assert search(resumed) == 0
    study = open_study(cfg)
    table = pd.read_csv(cfg.run_dir / "trials.csv")
    assert len(table) == BUDGET and table["trial"].is_unique
    assert stale.number not in set(table["trial"])  # the interrupted attempt is not counted
    # ... but its architecture was run again, once
    specs = [ArchSpec.from_dict(t.user_attrs["spec"]) for t in study.trials if "spec" in t.user_attrs and not t.user_attrs.get("interrupted")]
    assert sum(s == stale_spec for s in specs) == 1
    first = pd.read_csv(cfg.run_dir / "trials.csv").head(3)
    assert (first["state"] != "").all()


def test_a_resumed_proposing_sampler_keeps_its_seed(tmp_path):
    cfg = make_config(tmp_path, "--sampler", "local")
    cfg.run_dir.mkdir(parents=True)
    study = open_study(cfg)
    study.enqueue_trial({})
    study.ask()
    # its proposals come from (seed, trial number): a new seed on resume would change them (the
    # screening sampler's whole candidate pool with it)
    assert open_study(cfg).sampler.seed == cfg.meaning.seed == 1


def test_each_reference_validation_equals_the_stage_training_of_its_job(run):
    # the presets' validation trainings may run in idle CPU time during the search (nas.idle_time):
    # what the study holds must be what the stage's own training of that job gives
    from nas import validate as val
    from trainers.data import load_data

    study = optuna.load_study(study_name=run.study, storage=run.storage_url)
    p = run.protocol
    presets = [t.number for t in study.trials if t.user_attrs.get("preset")]
    jobs = [val.Job(n, seed, ArchSpec.from_dict(study.trials[n].user_attrs["spec"])
                    .with_input(height=p.height, width=p.width).to_dict(), 0.0) for n in presets for seed in p.seeds]
    assert all(job.key in study.user_attrs for job in jobs)
    data = load_data(None, p.height, p.width, seed=run.meaning.seed)
    edanet = [job for job in jobs if study.trials[job.number].user_attrs["preset"] == "edanet"]
    for job in edanet:  # the smallest net: the idle time's first trainings
        assert val.train_job(job, data, p, run.settings)["miou"] == study.user_attrs[job.key]["miou"]


def test_export_any_trial_and_a_verified_onnx(run, tmp_path):
    from nas import export
    table = pd.read_csv(run.run_dir / "trials.csv")
    number = int(table[table["state"] == "complete"]["trial"].iloc[0])
    out = tmp_path / "t.yaml"
    assert export.main(["--run", str(run.run_dir), "--trial", str(number), "--out", str(out),
                        "--onnx", str(tmp_path / "t.onnx")]) == 0
    spec = ArchSpec.from_yaml(out)
    assert spec.tag() == table.set_index("trial").loc[number, "tag"]
    assert (tmp_path / "t.onnx").stat().st_size > 1000
    with pytest.raises(Exception, match="no such trial"):
        export.main(["--run", str(run.run_dir), "--trial", "999"])


def test_export_of_a_validated_trial_carries_its_trained_weights(run, tmp_path, capsys):
    from nas import export
    from trainers.data import load_data
    from trainers.deploy import onnx_miou, session
    study = open_study(run)
    records = {k: v for k, v in study.user_attrs.items() if k.startswith("validated:") and v["status"] == "complete"}
    kept = sorted(p.name for p in (run.run_dir / "weights").glob("*.pt"))  # every validated training's weights
    assert kept == sorted(f"trial_{int(k.split(':')[1]):04d}_seed{k.split(':')[2]}.pt" for k in records)
    front = set(pd.read_csv(run.run_dir / "pareto.csv")["trial"])
    number, seed = max((int(k.split(":")[1]), int(k.split(":")[2])) for k in records if int(k.split(":")[1]) in front)
    onnx_path = tmp_path / "trained.onnx"
    assert export.main(["--run", str(run.run_dir), "--trial", str(number), "--seed", str(seed),
                        "--onnx", str(onnx_path), "--check-miou"]) == 0
    assert f"validation seed {seed}" in capsys.readouterr().out
    data = load_data(None, run.meaning.val_height, run.meaning.val_width, seed=run.meaning.seed)
    got = onnx_miou(session(onnx_path), data.val, data.info.num_classes, data.info.ignore_index).miou
    assert got == pytest.approx(records[f"validated:{number}:{seed}"]["miou"], abs=1e-4)
    with pytest.raises(Exception, match="--seed 77: no trained weights"):
        export.main(["--run", str(run.run_dir), "--trial", str(number), "--seed", "77", "--onnx", str(onnx_path)])
    with pytest.raises(Exception, match="--check-miou: only means something with --onnx"):
        export.main(["--run", str(run.run_dir), "--trial", str(number), "--check-miou"])


def test_latency_is_onnxruntime_by_default_and_recorded_in_the_meaning(run, tmp_path):
    assert run.settings.latency_backend == "onnxruntime"
    assert make_config(tmp_path, "--latency-backend", "torch").settings.latency_backend == "torch"
    assert open_study(run).user_attrs["trial_meaning"]["latency"].startswith("onnxruntime, 1 thread(s)")


def test_the_run_folder_is_copied_to_an_artifacts_uri(run, tmp_path):
    from nas.run_folder import publish_run_folder

    target = publish_run_folder(run.run_dir, str(tmp_path / "shared"))
    copied = {p.relative_to(target).as_posix() for p in __import__("pathlib").Path(target).rglob("*") if p.is_file()}
    made = {p.relative_to(run.run_dir).as_posix() for p in run.run_dir.rglob("*") if p.is_file()} - {".lock"}
    assert copied == made and "pareto.csv" in copied and any(c.startswith("weights/") for c in copied)
