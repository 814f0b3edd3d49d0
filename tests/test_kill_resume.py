"""A driver killed hard (SIGKILL at random moments, several times), then resumed: exactly the budget,
no completed trial lost or changed, none counted twice, results regenerated from the study."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

pytestmark = pytest.mark.slow
BUDGET = 14


def processes():
    """(pid, command line, environment) of every other process this user can read."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore")
            env = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="ignore")
        except OSError:
            continue
        yield int(pid), cmd, env


def _kill_processes_mentioning(marker: str) -> None:
    """Kill what a killed driver left behind (Ray's daemons and workers), found by their command line."""
    for pid, cmd, env in processes():
        if marker in cmd or marker in env:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _completed(db: Path) -> dict[int, tuple]:
    if not db.exists():
        return {}
    try:
        study = optuna.load_study(study_name="k", storage=f"sqlite:///{db}")
    except Exception:  # no study (or no tables) written yet
        return {}
    return {t.number: tuple(t.values) for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}


def test_sigkill_then_resume_several_times(tmp_path):
    rng = random.Random(0)
    marker = f"lightseg-kill-test-{os.getpid()}"
    env = dict(os.environ, LIGHTSEG_RAY_TMP=f"/tmp/{marker}", LIGHTSEG_CACHE=str(tmp_path / "cache"),
               KILL_TEST_MARKER=marker)
    cmd = [sys.executable, "-m", "nas.search", "--budget", str(BUDGET), "--epochs", "2", "--size", "32x32",
           "--val-size", "32x32", "--val-epochs", "1",
           "--out", str(tmp_path), "--study", "k"]
    db = tmp_path / "k" / "study.db"
    seen: dict[int, tuple] = {}
    kills = 0
    try:
        for round_ in range(3):
            args = cmd + (["--resume"] if round_ else [])
            proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # kill at a random moment after the round has completed at least one new trial
            deadline = time.time() + 240
            while proc.poll() is None and len(_completed(db)) <= len(seen) and time.time() < deadline:
                time.sleep(0.5)
            time.sleep(rng.uniform(0, 4))
            if proc.poll() is None:
                proc.kill()
                kills += 1
            proc.wait()
            _kill_processes_mentioning(marker)
            now = _completed(db)
            assert all(now.get(n) == v for n, v in seen.items()), "a completed trial was lost or changed"
            print(f"round {round_}: killed={proc.returncode == -signal.SIGKILL}, completed so far {len(now)}, "
                  f"kept {sum(now.get(n) == v for n, v in seen.items())}/{len(seen)}")
            seen = now
        final = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=600)
        assert final.returncode == 0, final.stderr[-2000:]
    finally:
        _kill_processes_mentioning(marker)
    assert kills >= 2
    now = _completed(db)
    assert all(now.get(n) == v for n, v in seen.items())
    table = pd.read_csv(tmp_path / "k" / "trials.csv")
    print(f"after {kills} kills and a final resume: {len(table)} rows, states {table['state'].value_counts().to_dict()}")
    assert len(table) == BUDGET and table["trial"].is_unique
    complete = table[table["state"] == "complete"].set_index("trial")
    for n, values in now.items():
        assert complete.loc[n, "miou"] == pytest.approx(values[0])
    assert sorted(p.stem for p in (tmp_path / "k" / "pareto").glob("*.yaml")) == sorted(
        f"trial_{n:04d}" for n in pd.read_csv(tmp_path / "k" / "pareto.csv")["trial"])
