"""Ctrl-C (one SIGINT) stops a search within seconds: the trials in flight are queued again, the
validated stage is skipped, the results of what finished are written, the line says how to resume,
the exit is non-zero; the `--resume` it names then completes exactly the budget."""
import io
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter

import optuna
import pandas as pd
import pytest
import yaml

from test_kill_resume import _kill_processes_mentioning, processes

pytestmark = pytest.mark.slow
BUDGET = 6
HINT = "interrupted — continue with --resume: "


def _training(marker: str) -> bool:
    """Whether a trial of the search marked `marker` is in its worker (Ray Tune names the process)."""
    return any("ImplicitFunc.train" in cmd and marker in env for _, cmd, env in processes())


def _key(params: dict) -> str:
    return repr(sorted(params.items()))


def _trials(db):
    try:
        return optuna.load_study(study_name="k", storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    except Exception:  # no study (or no tables) written yet
        return []


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_the_search_and_resume_completes_exactly_the_budget(tmp_path, presses):
    """`presses` Ctrl-C in a row, sent as a terminal sends them: to the whole process group."""
    marker = f"lightseg-sigint-test-{os.getpid()}"
    env = dict(os.environ, LIGHTSEG_RAY_TMP=os.path.join(tempfile.gettempdir(), marker), LIGHTSEG_CACHE=str(tmp_path / "cache"),
               KILL_TEST_MARKER=marker)
    flags = ["--budget", str(BUDGET), "--epochs", "2", "--size", "32x32", "--val-size", "32x32", "--val-epochs", "1",
             "--val-max", "1", "--out", str(tmp_path), "--study", "k"]
    db = tmp_path / "k" / "study.db"
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    try:
        with open(out, "w") as stdout, open(err, "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "nas.search", *flags], env=env, stdout=stdout, stderr=stderr,
                                    start_new_session=True)  # its own group, as a shell gives a job
            deadline = time.time() + 300
            while proc.poll() is None and time.time() < deadline and not _training(marker):
                time.sleep(0.5)
            assert proc.poll() is None, "the search ended before a trial ran"
            sent = time.time()
            for press in range(presses):
                if press:
                    time.sleep(0.3)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
            took = time.time() - sent
        printed, said = out.read_text(), err.read_text()
        assert took < 10, f"took {took:.1f} s to stop"
        assert proc.returncode == 130, said[-2000:]
        assert "Traceback" not in said and "validating" not in printed
        hint = [line for line in said.splitlines() if line.startswith(HINT)]
        assert len(hint) == 1, said[-2000:]
        command = shlex.split(hint[0][len(HINT):])
        assert command[:3] == ["python", "-m", "nas.search"] and command[-1] == "--resume"
        assert command[3:-1] == flags  # the same flags, so the resume keeps the study's settings
        interrupted = []
        if presses == 1:  # a second press may land while the trials are queued again or the results written:
            # the study is then left as a killed driver leaves it, and the resume below recovers it
            trials = _trials(db)
            interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
            assert interrupted and not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
            assert not [k for k in optuna.load_study(study_name="k", storage=f"sqlite:///{db}").user_attrs
                        if k.startswith("validated:")]  # the validated stage was skipped
            queued = Counter(_key(t.system_attrs["fixed_params"]) for t in trials if t.state == optuna.trial.TrialState.WAITING)
            for t in interrupted:  # each interrupted trial is queued again, with its parameters
                assert queued[_key(t.params)] >= 1
            finished = [t for t in trials if "status" in t.user_attrs]
            table = (tmp_path / "k" / "trials.csv").read_text()  # the results of what finished (maybe nothing yet)
            assert (len(pd.read_csv(io.StringIO(table))) if table.strip() else 0) == len(finished)
            wrote = [line for line in printed.splitlines() if line.startswith("wrote ")]
            assert len(wrote) == 1 and "presets.csv" not in wrote[0] and not (tmp_path / "k" / "presets.csv").exists()
        _kill_processes_mentioning(marker)

        resumed = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert "no study" not in resumed.stdout  # the study it resumes is there
    finally:
        _kill_processes_mentioning(marker)
    trials = _trials(db)
    counted = [t for t in trials if "status" in t.user_attrs and not t.user_attrs.get("interrupted")]
    states = Counter(t.user_attrs["status"] for t in counted)
    print(f"after {presses} SIGINT and a resume: {len(trials)} trials in the study, counted {dict(states)}, "
          f"interrupted {len(interrupted)}")
    assert len(counted) == BUDGET, states
    assert not [t for t in trials if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)]
    for t in interrupted:  # run again, and counted once
        assert sum(_key(c.params) == _key(t.params) for c in counted) >= 1
    table = pd.read_csv(tmp_path / "k" / "trials.csv")
    assert len(table) == BUDGET and table["trial"].is_unique
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{db}")
    assert study.metric_names == ["miou", "gmacs", "latency_ms", "peak_mem_mb"]
    assert "faults" not in yaml.safe_load((tmp_path / "k" / "config.yaml").read_text())["settings"]
