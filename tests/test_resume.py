"""Resume is safe: other settings are refused; only dead drivers' trials are re-queued."""
import time

import optuna
import pytest
from optuna.trial import TrialState

from nas import study as st
from nas.cli import run as run_cli
from nas.search import main as search_main
from trainers.data import load_data

from test_search import make_config


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTSEG_CACHE", str(tmp_path / "cache"))


def test_resume_with_settings_that_change_a_trials_meaning_is_refused(tmp_path, capsys):
    first = make_config(tmp_path)
    with st.locked_run_dir(first):
        st.check_resumable(st.open_study(first), first, load_data(None, 32, 32, seed=1))
    argv = ["--budget", "7", "--out", str(tmp_path), "--study", "tiny", "--seed", "2", "--resume",
            "--size", "64x64", "--epochs", "2", "--max-gmacs", "0.5", "--objectives", "miou,gmacs"]
    with pytest.raises(SystemExit) as exit_:
        run_cli(search_main, argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    for expected in ("size: 32x32 then, 64x64 now", "epochs: 1 then, 2 now", "seed: 1 then, 2 now",
                     "constraints: none then, max_gmacs <= 0.5 now", "objectives: miou,gmacs,latency,memory then, miou,gmacs now"):
        assert expected in err, expected
    assert not (first.run_dir / "config.yaml").exists()  # nothing was overwritten
    # the same settings (and a sampler change, which does not change what a trial means) resume
    same = first.replace(sampler="random", resume=True)
    with st.locked_run_dir(same):
        st.check_resumable(st.open_study(same), same, load_data(None, 32, 32, seed=1))


def _ask(study, owner):
    trial = study.ask()
    trial.suggest_int("x", 0, 1000)
    trial.set_user_attr("owner", owner)
    study._storage.record_heartbeat(trial._trial_id)
    return trial


def test_resume_on_a_shared_database_leaves_a_live_search_alone(tmp_path, monkeypatch):
    check_resume_leaves_a_live_search_alone(tmp_path, monkeypatch, f"sqlite:///{tmp_path / 'shared.db'}")


def check_resume_leaves_a_live_search_alone(tmp_path, monkeypatch, url):
    """Also run on PostgreSQL by tests/test_postgres.py."""
    monkeypatch.setattr(st, "HEARTBEAT_S", 1)
    monkeypatch.setattr(st, "GRACE_S", 3)  # heartbeats are stored to the second: a margin of 2 beats
    ours = make_config(tmp_path / "a", "--storage", url, "--objectives", "miou,gmacs")
    other = make_config(tmp_path / "b", "--storage", url, "--objectives", "miou,gmacs")
    live_study = st.open_study(other)
    live = _ask(live_study, other.owner)  # another search, alive: it keeps beating
    dead_elsewhere = _ask(live_study, "elsewhere:/runs/x")  # a search whose driver stopped beating
    ours_killed = _ask(live_study, ours.owner)  # our own killed driver: fresh heartbeat, but dead
    with st.Heartbeat(live_study, {"live": live}):
        time.sleep(4.5)
        n = st.recover_stale_trials(st.open_study(ours), ours.owner, private=False)
        assert n == 2
        trials = {t.number: t for t in live_study.get_trials()}
        assert trials[live.number].state == TrialState.RUNNING
        for t in (dead_elsewhere, ours_killed):
            assert trials[t.number].state == TrialState.FAIL and "status" not in trials[t.number].user_attrs
        assert trials[ours_killed.number].user_attrs["interrupted"]
        waiting = [t.system_attrs["fixed_params"]["x"] for t in trials.values() if t.state == TrialState.WAITING]
        assert sorted(waiting) == sorted([dead_elsewhere.params["x"], ours_killed.params["x"]])
    live_study.tell(live, [0.5, 0.1])  # the live search's result is still accepted
    assert live_study.trials[live.number].state == TrialState.COMPLETE


def test_every_running_trial_of_a_private_database_is_ours():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    study.ask().suggest_int("x", 0, 9)
    moved = study.ask()  # owned by this run folder under an earlier host name or path
    moved.suggest_int("x", 0, 9)
    moved.set_user_attr("owner", "old-host:/runs/a")
    # in-memory storage has no heartbeat: only ownership decides
    assert st.recover_stale_trials(study, "me", private=False) == 0
    assert st.recover_stale_trials(study, "me", private=True) == 2
