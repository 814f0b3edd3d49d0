"""`--storage postgresql://...` against a real PostgreSQL server that each test starts itself: drivers
opening a fresh database together, each driver's own budget, the heartbeat recovery of
test_resume.py, and (slow) two drivers on one study at once, one of them killed and resumed while
the other lives as in test_kill_resume.py: the database several machines would share."""
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nas import storage as storage_module, study as st
from nas.pareto import counted_trials

import pg_server
from test_kill_resume import _kill_processes_mentioning
from test_resume import check_resume_leaves_a_live_search_alone
from test_search import make_config

STUDY = "shared"


@pytest.fixture
def postgres_url():
    with pg_server.running() as url:
        yield url


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTSEG_CACHE", str(tmp_path / "cache"))


_OPEN_TOGETHER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from nas import study as st
from test_search import make_config
cfg = make_config(sys.argv[2], "--storage", sys.argv[3], "--study", "shared")
open(sys.argv[2] + ".ready", "w").close()
while not __import__("os").path.exists(sys.argv[4]):  # all open the database at the same moment
    time.sleep(0.01)
st.open_study(cfg)
"""


def test_drivers_opening_a_fresh_database_together_all_get_the_study(tmp_path, postgres_url):
    # Each opener creates Optuna's tables if missing; on PostgreSQL the losers of that race used to be
    # refused with "--storage cannot be opened" (a table already made, or a unique index of the
    # catalogue), so one of several drivers started together died.
    go = tmp_path / "go"
    outs = [tmp_path / f"d{i}" for i in range(6)]
    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_TOGETHER, str(Path(__file__).parent), str(out), postgres_url,
                               str(go)], stderr=subprocess.PIPE, text=True) for out in outs]
    try:
        deadline = time.time() + 120
        while not all(Path(f"{out}.ready").exists() for out in outs) and time.time() < deadline:
            time.sleep(0.05)
        go.touch()
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(e[-800:] for e in errors)
    assert len(optuna.get_all_study_names(postgres_url)) == 1


class _PgError(Exception):
    """A driver's error carrying PostgreSQL's code: psycopg (3) names it sqlstate, psycopg2 pgcode."""

    def __init__(self, code, attr="sqlstate"):
        super().__init__(f"{attr} {code}")
        setattr(self, attr, code)


@pytest.mark.parametrize("attr", ["sqlstate", "pgcode"])
def test_only_losing_the_table_creation_race_is_retried(monkeypatch, attr):
    # The race above is timing-bound and rarely shows on a fast machine; this pins the rule itself:
    # duplicate table/object and unique violation (PostgreSQL's 42P07, 42710, 23505) are retried,
    # any other database error reaches the user at once, whichever driver reports the code.
    import sqlalchemy.exc
    raised = [sqlalchemy.exc.ProgrammingError("CREATE TABLE studies", {}, _PgError("42P07", attr)),
              sqlalchemy.exc.IntegrityError("CREATE INDEX", {}, _PgError("23505", attr)),
              sqlalchemy.exc.ProgrammingError("CREATE TYPE", {}, _PgError("42710", attr))]
    calls = []

    def storage(url, **kwargs):
        calls.append(url)
        if raised:
            raise raised.pop(0)
        return "opened"

    monkeypatch.setattr(optuna.storages, "RDBStorage", storage)
    monkeypatch.setattr(storage_module.time, "sleep", lambda s: None)
    assert storage_module._open_storage("postgresql://db") == "opened" and len(calls) == 4
    raised.append(sqlalchemy.exc.ProgrammingError("SELECT", {}, _PgError("42501", attr)))  # insufficient_privilege
    with pytest.raises(sqlalchemy.exc.ProgrammingError):
        storage_module._open_storage("postgresql://db")
    assert len(calls) == 5


# --- a URL whose driver is missing: one line naming the package ----------------------------------
@pytest.mark.parametrize("url, module, package", [
    ("postgresql://USER:PASSWORD@127.0.0.1:1/DB", "psycopg", "pip install 'psycopg[binary]'"),
    ("postgresql+psycopg2://USER:PASSWORD@127.0.0.1:1/DB", "psycopg2", "pip install psycopg2-binary"),
    ("mysql://USER:PASSWORD@127.0.0.1:1/DB", "MySQLdb", "pip install mysqlclient"),
])
def test_a_storage_whose_driver_is_missing_is_one_line_naming_the_package(tmp_path, monkeypatch, capsys,
                                                                          url, module, package):
    # SQLAlchemy (and Optuna after it) said only "Failed to import DB access module". The driver is
    # made missing for sure: a None in sys.modules fails its import as an absent package does.
    from nas import search
    from nas.cli import run
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")  # search.main sets it for its own process
    with pytest.raises(SystemExit) as exit_:
        run(search.main, ["--storage", url, "--out", str(tmp_path / "out"), "--budget", "1", "--no-validate"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err, err
    shown = url.replace(":PASSWORD@", ":***@")  # a password never reaches the terminal
    assert err == (f"error: --storage {shown!r} cannot be opened: its database driver {module} is not installed; "
                   f"install it with: {package}")
    assert not (tmp_path / "out" / "default" / "study.db").exists()


def test_a_storage_of_no_known_database_is_one_line(tmp_path, monkeypatch, capsys):
    from nas import search
    from nas.cli import run
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    with pytest.raises(SystemExit):
        run(search.main, ["--storage", "postgress://USER@HOST/DB", "--out", str(tmp_path / "out"), "--budget", "1"])
    err = capsys.readouterr().err.strip()
    assert err == ("error: --storage 'postgress://USER@HOST/DB' cannot be opened: SQLAlchemy has no dialect "
                   "'postgress' (a URL such as sqlite:///study.db or postgresql://USER:PASSWORD@HOST:5432/DB)")


def _finished(study, owner, status="complete"):
    trial = study.ask()
    trial.suggest_int("x", 0, 1000)
    trial.set_user_attr("owner", owner)
    trial.set_user_attr("status", status)
    study.tell(trial, [0.5, 0.1])


def test_on_a_shared_database_each_driver_runs_its_own_budget(tmp_path, postgres_url):
    a, b = (make_config(tmp_path / d, "--storage", postgres_url, "--study", STUDY, "--objectives", "miou,gmacs")
            for d in ("a", "b"))
    study_a, study_b = st.open_study(a), st.open_study(b)
    for _ in range(2):
        _finished(study_a, a.owner)
    _finished(study_b, b.owner, "failed")
    assert st.remaining_budget(study_a, 7, a.budget_owner) == 5 and st.remaining_budget(study_b, 7, b.budget_owner) == 6
    # a run folder's private database counts every trial, whatever host or path it ran under
    private = make_config(tmp_path / "p", "--objectives", "miou,gmacs")
    with st.locked_run_dir(private):
        study = st.open_study(private)
        _finished(study, "old-host:/runs/p")
        assert st.remaining_budget(study, 7, private.budget_owner) == 6


def test_resume_leaves_a_live_search_alone(tmp_path, monkeypatch, postgres_url):
    # the heartbeat test of test_resume.py: stale and own trials re-queued, a beating one untouched
    check_resume_leaves_a_live_search_alone(tmp_path, monkeypatch, postgres_url)


# --- two live drivers: slow ----------------------------------------------------------------------
class Drivers:
    """`python -m nas.search` processes on one study; each has a marker in its environment, so that
    what it leaves behind when killed (Ray's daemons and workers) can be found and ended."""

    def __init__(self, tmp_path: Path, url: str):
        self.tmp_path, self.url = tmp_path, url
        self.markers: set[str] = set()

    def start(self, name: str, budget: int) -> subprocess.Popen:
        marker = f"lightseg-pg-test-{os.getpid()}-{name}"
        self.markers.add(marker)
        env = dict(os.environ, LIGHTSEG_RAY_TMP=f"/tmp/{marker}", KILL_TEST_MARKER=marker)
        # --resume: a driver joining a study that exists must say so, and started together either may
        # find the other's study first. One trial at a time each keeps two drivers on two cores.
        cmd = [sys.executable, "-m", "nas.search", "--storage", self.url, "--study", STUDY, "--budget", str(budget),
               "--out", str(self.tmp_path / name), "--size", "32x32", "--epochs", "1", "--no-validate",
               "--no-presets", "--max-concurrent", "1", "--resume"]
        log = open(self.tmp_path / f"{name}.log", "a")
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _kill_processes_mentioning(f"lightseg-pg-test-{os.getpid()}-{name}")

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for marker in self.markers:
            _kill_processes_mentioning(marker)
            shutil.rmtree(f"/tmp/{marker}", ignore_errors=True)


@contextmanager
def drivers(tmp_path, url):
    d = Drivers(tmp_path, url)
    try:
        yield d
    finally:
        d.close()


def _owner(tmp_path, name):
    return make_config(tmp_path / name, "--study", STUDY).owner


def _wait(procs, d: Drivers, timeout=600):
    deadline = time.time() + timeout
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"driver {name} still running after {timeout} s:\n{d.log(name)[-2000:]}")
        assert proc.returncode == 0, f"driver {name} exited {proc.returncode}:\n{d.log(name)[-2000:]}"


def _by_owner(trials, owner):
    return [t for t in trials if t.user_attrs.get("owner") == owner]


@pytest.mark.slow
def test_two_drivers_on_one_study_run_the_sum_of_their_budgets(tmp_path, postgres_url):
    start = time.time()
    with drivers(tmp_path, postgres_url) as d:
        _wait({name: d.start(name, 3) for name in ("a", "b")}, d)
    study = optuna.load_study(study_name=STUDY, storage=postgres_url)
    trials = study.get_trials()
    print(f"two drivers, budgets 3 + 3: {len(trials)} trials in {time.time() - start:.0f} s")
    assert len(counted_trials(study)) == 6 == len(trials)
    for name in ("a", "b"):
        mine = _by_owner(counted_trials(study), _owner(tmp_path, name))
        assert len(mine) == 3, name
        assert (tmp_path / name / STUDY / "trials.csv").exists()


@pytest.mark.slow
def test_a_killed_driver_resumed_requeues_only_its_own_trials(tmp_path, postgres_url):
    owner_a, owner_b = _owner(tmp_path, "a"), _owner(tmp_path, "b")
    storage = optuna.storages.RDBStorage(postgres_url)  # the tables exist before any driver starts
    start = time.time()
    with drivers(tmp_path, postgres_url) as d:
        a, b = d.start("a", 3), d.start("b", 3)

        def running(owner):
            try:
                study = optuna.load_study(study_name=STUDY, storage=storage)
            except KeyError:  # no driver has created the study yet
                return []
            return _by_owner(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), owner)

        deadline = time.time() + 300
        while not (running(owner_a) and running(owner_b)) and time.time() < deadline:
            assert a.poll() is None and b.poll() is None, d.log("a")[-1000:] + d.log("b")[-1000:]
            time.sleep(0.5)
        assert running(owner_b), "driver b never had a trial running"
        d.kill("b", b)
        killed = {t.number for t in running(owner_b)}
        assert killed and a.poll() is None
        resumed = d.start("b", 3)
        # b's resume re-queues at once what its dead driver left RUNNING; a keeps beating meanwhile
        deadline = time.time() + 120
        while {t.number for t in running(owner_b)} & killed and time.time() < deadline:
            time.sleep(0.5)
        a_alive_at_recovery = a.poll() is None
        _wait({"a": a, "b": resumed}, d)
    print(f"a kill of driver b and its resume beside live driver a: {time.time() - start:.0f} s; "
          f"b's killed trials {sorted(killed)}; a alive while b recovered: {a_alive_at_recovery}")
    assert a_alive_at_recovery, "driver a finished before b's resume recovered: nothing showed it was left alone"
    assert f"resuming: {len(killed)} interrupted trial(s) queued again" in d.log("b")
    study = optuna.load_study(study_name=STUDY, storage=storage)
    trials = study.get_trials()
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    assert {t.number for t in interrupted} == killed
    assert all(t.user_attrs["owner"] == owner_b and t.state == TrialState.FAIL for t in interrupted)
    # the live neighbour finished untouched: every trial it ran has its own outcome
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) and "interrupted" not in t.user_attrs
               for t in _by_owner(trials, owner_a))
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len(_by_owner(counted_trials(study), owner_a)) == 3 == len(_by_owner(counted_trials(study), owner_b))
    assert len(counted_trials(study)) == 6
