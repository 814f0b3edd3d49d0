"""Faults during a search: every bad trial is a failed row with its reason; the budget completes."""
import os
import fcntl

import pandas as pd
import pytest

from nas.cli import run as run_cli
from nas.search import main as search_main, search
from nas.study import RunFolderError
from nas.trial import FaultPlan

from test_search import make_config

BUDGET = 7


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    os.environ.setdefault("LIGHTSEG_CACHE", str(tmp_path_factory.mktemp("cache")))
    out = tmp_path_factory.mktemp("faults")
    faults = FaultPlan(raise_at=(0,), nan_at=(1,), oom_at=(2,), kill_worker_at=(3,), kill_worker_once_at=(4,),
                       cuda_error_once_at=(5,))
    cfg = make_config(out, "--no-presets", "--no-early-stopping", faults=faults)
    assert search(cfg) == 0
    return cfg, pd.read_csv(cfg.run_dir / "trials.csv").set_index("trial")


def test_the_budget_completes_with_one_row_per_trial(faulty_run):
    cfg, table = faulty_run
    assert len(table) == BUDGET and table.index.is_unique


@pytest.mark.parametrize("number,reason,attempts", [
    (0, "RuntimeError: injected fault", 1),
    (1, "TrainingDiverged: validation mIoU is", 1),
    (3, "worker process died", None),
])
def test_each_fault_is_a_failed_row_with_its_reason(faulty_run, number, reason, attempts):
    _, table = faulty_run
    row = table.loc[number]
    assert row["state"] == "failed" and reason in row["reason"]
    if attempts:
        assert row["attempts"] == attempts


def test_out_of_memory_is_retried_once_later_not_at_once(faulty_run):
    _, table = faulty_run
    assert 2 not in table.index  # the deferred first attempt uses no budget
    retry = table[table["retry_of"] == 2]
    assert len(retry) == 1 and retry.index[0] == BUDGET  # queued after every other trial of the budget
    row = retry.iloc[0]
    assert row["state"] == "failed" and "out of memory" in row["reason"] and row["attempts"] == 2


def test_a_worker_killed_once_is_retried_and_completes(faulty_run):
    _, table = faulty_run
    assert table.loc[4, "state"] == "complete" and table.loc[4, "attempts"] == 2
    assert table.loc[6, "state"] == "complete"


def test_a_cuda_error_ends_the_worker_and_the_trial_runs_again_in_a_fresh_one(faulty_run):
    _, table = faulty_run
    assert table.loc[5, "state"] == "complete" and table.loc[5, "attempts"] == 2


def test_a_run_folder_in_use_is_refused(faulty_run):
    cfg, _ = faulty_run
    with open(cfg.run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunFolderError, match="in use by another running search"):
            search(cfg.replace(resume=True))
        with pytest.raises(RunFolderError, match="in use"):
            search(cfg.replace(force=True))


@pytest.mark.parametrize("argv,message", [
    (["--budget", "0"], "--budget 0: must be at least 1"),
    (["--budget", "-3"], "--budget -3"),
    (["--gpus-per-trial", "0.5"], "--gpus-per-trial 0.5: this machine has 0 GPU"),
    (["--max-latency-ms", "0"], "--max-latency-ms 0"),
    (["--max-gmacs", "-1"], "constraint must be positive"),
    (["--objectives", "miou,flops"], "--objectives 'miou,flops'"),
    (["--objectives", "gmacs,latency"], "give miou"),
    (["--size", "30x64"], "multiples of 32"),
    (["--size", "big"], "expected HxW"),
    (["--resume", "--force"], "contradict"),
    (["--pick", "memory", "--objectives", "miou,gmacs"], "--pick memory"),
])
def test_bad_cli_values_exit_2_with_one_clear_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        run_cli(search_main, argv + ["--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_sampler_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(search_main, ["--sampler", "annealing"])
    assert exit_.value.code == 2 and "invalid choice: 'annealing'" in capsys.readouterr().err


def test_bad_dataset_and_storage_are_refused_before_any_trial(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(search_main, ["--data", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        run_cli(search_main, ["--storage", "nosuchdb://x", "--out", str(tmp_path), "--size", "32x32"])
    assert exit_.value.code == 2 and "cannot be opened" in capsys.readouterr().err
