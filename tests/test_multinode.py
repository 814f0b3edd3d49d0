"""A search on a Ray cluster whose worker nodes share no disk with the driver (slow).

On one machine: a head offering no CPUs (so no trial or validation training can run there) and a
worker node in its own mount namespace, the driver's --out folder covered there by an empty tmpfs
(tests/ray_cluster.py). The driver runs beside the head and writes the run folder. Every decoder
kind is searched and validated; every trial and training ran on the worker node; the worker node
wrote nothing into the run folder and still `nas.export --check-miou` on the driver finds the trained
weights. Then two worker nodes in turn are SIGKILLed mid-search, each replaced by a fresh one, and
the driver is SIGKILLed mid-search and resumed: the budget is met exactly, no completed trial is lost
or counted twice, and the interrupted trials run again.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from nas.pareto import counted_trials
from nas.records import storage_url
from nas.search import build_parser, config_from_args
from nas.study import open_study, study_space
from trainers.data import load_data

from ray_cluster import LoopbackCluster, namespaces_supported, ray_env
from test_kill_resume import _completed, _kill_processes_mentioning
from test_real_scale import SPECS

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
SIZE = "32x32"
STUDY = "k"  # the study name test_kill_resume's helpers read
# what the driver writes into a run folder: no attempts/ or dupsample/ (which workers kept there before
# the run folder stopped being shared; a worker's own writes would land in its tmpfs, checked apart)
DRIVER_FILES = re.compile(r"(study\.db|\.lock|trials\.csv|pareto\.csv|presets\.csv|importance\.csv|best\.yaml|"
                          r"config\.yaml|report\.html|hypervolume\.png|pareto_\w+\.png|marginals_\w+\.png|"
                          r"pareto|weights|tune)$")


@pytest.fixture
def cluster(tmp_path):
    why = namespaces_supported()
    if why:
        pytest.skip(why)
    with LoopbackCluster(tmp_path / "out", tmp_path / "ray-logs") as c:
        yield c


def search_args(out: Path, budget: int, *extra: str) -> list[str]:
    return ["--budget", str(budget), "--epochs", "1", "--size", SIZE, "--no-presets", "--val-size", SIZE,
            "--out", str(out), "--study", STUDY, "--seed", "0", *extra]


def enqueue_every_decoder(args: list[str]) -> Path:
    """Create the study with one net of each decoder kind queued first (the way test_real_scale
    does); the driver then runs it with --resume. Returns the run folder."""
    cfg = config_from_args(build_parser().parse_args(args))
    cfg.run_dir.mkdir(parents=True)
    study = open_study(cfg)
    data = load_data(None, cfg.meaning.height, cfg.meaning.width, seed=cfg.meaning.seed)
    space = study_space(data, cfg.meaning.height, cfg.meaning.width)
    for spec in SPECS[:4]:  # bilinear, erfnet, apn, dupsample
        study.enqueue_trial(space.encode(spec.with_input(height=cfg.meaning.height, width=cfg.meaning.width,
                                                         num_classes=data.info.num_classes)))
    return cfg.run_dir


def driver(cluster: LoopbackCluster, args: list[str], tmp_path: Path) -> subprocess.Popen:
    """The driver as its own process group; its output goes to files (a full pipe would block it)."""
    env = ray_env(LIGHTSEG_CACHE=str(tmp_path / "cache"), KILL_TEST_MARKER=f"lightseg-multinode-{os.getpid()}")
    n = len(list(tmp_path.glob("driver-*.out")))
    with open(tmp_path / f"driver-{n}.out", "w") as out, open(tmp_path / f"driver-{n}.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "nas.search", "--address", cluster.address, *args], cwd=ROOT,
                                env=env, stdout=out, stderr=err, text=True, start_new_session=True)
    proc.log = tmp_path / f"driver-{n}"
    return proc


def output(proc: subprocess.Popen) -> tuple[str, str]:
    return (Path(f"{proc.log}.out").read_text(), Path(f"{proc.log}.err").read_text())


def finish(proc: subprocess.Popen, timeout: float = 420) -> tuple[str, str]:
    try:
        proc.wait(timeout)
    finally:
        kill_driver(proc)
    out, err = output(proc)
    assert proc.returncode == 0, err[-4000:]
    return out, err


def kill_driver(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    _kill_processes_mentioning(f"lightseg-multinode-{os.getpid()}")


def load(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=storage_url(run_dir))


def wait_for_running(run_dir: Path, proc: subprocess.Popen, timeout: float = 240) -> set[int]:
    """Block until at least one trial has completed and some are running; returns the running ones."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, output(proc)[1][-4000:]
        if len(_completed(run_dir / "study.db")) >= 1:
            running = {t.number for t in load(run_dir).get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
            if running:
                return running
        time.sleep(0.3)
    raise AssertionError("no trial ran on the worker node in time")


def ran_on(study: optuna.Study) -> dict[str, set]:
    """The node ids the trials (by number) and validation trainings (by key) ran on."""
    trials = {t.user_attrs.get("node") for t in counted_trials(study)}
    validations = {v.get("node") for k, v in study.user_attrs.items() if k.startswith("validated:")}
    return {"trials": trials, "validations": validations}


def test_search_on_a_worker_node_that_cannot_see_the_run_folder(cluster, tmp_path):
    worker = cluster.add_worker(cpus=2)
    out = cluster.hidden
    args = search_args(out, 4, "--val-epochs", "1", "--val-max", "4")
    run_dir = enqueue_every_decoder(args)
    started = time.time()
    finish(driver(cluster, args + ["--resume"], tmp_path))
    print(f"search of 4 trials + validation on the worker node: {time.time() - started:.0f} s")

    assert worker.view(out) == [], "a worker wrote into its own copy of the run folder"
    study = load(run_dir)
    trials = counted_trials(study)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert {t.user_attrs["spec"]["decoder"]["kind"] for t in trials} == {"bilinear", "erfnet", "apn", "dupsample"}
    validated = {k: v for k, v in study.user_attrs.items() if k.startswith("validated:")}
    assert validated and all(v["status"] == "complete" for v in validated.values()), validated
    nodes = ran_on(study)
    assert nodes == {"trials": {worker.node_id}, "validations": {worker.node_id}}, (nodes, cluster.head.node_id)

    # everything in the run folder is the driver's: the validated weights were sent back and written here
    assert all(DRIVER_FILES.fullmatch(p.name) for p in run_dir.iterdir()), sorted(p.name for p in run_dir.iterdir())
    weights = sorted(p.name for p in (run_dir / "weights").iterdir())
    assert weights == sorted(f"trial_{int(k.split(':')[1]):04d}_seed{k.split(':')[2]}.pt" for k in validated)

    # export on the driver: prefer a DUpsampling net, whose W was fitted by the driver and sent by reference
    numbers = {int(k.split(":")[1]) for k in validated}
    kinds = {t.number: t.user_attrs["spec"]["decoder"]["kind"] for t in trials}
    number = min(numbers, key=lambda n: (kinds[n] != "dupsample", n))
    onnx = tmp_path / "net.onnx"
    export = subprocess.run([sys.executable, "-m", "nas.export", "--run", str(run_dir), "--trial", str(number),
                             "--onnx", str(onnx), "--check-miou"], cwd=ROOT, env=ray_env(LIGHTSEG_CACHE=str(tmp_path / "cache")),
                            capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    got = re.search(r"validation mIoU through ONNX Runtime: ([\d.]+) \(recorded ([\d.]+)", export.stdout)
    assert got, export.stdout
    print(f"trial {number} ({kinds[number]}): ONNX Runtime mIoU {got[1]}, recorded {got[2]}")
    assert float(got[1]) == pytest.approx(float(got[2]), abs=2e-3)
    best = max(v["miou"] for k, v in validated.items() if int(k.split(":")[1]) == number)
    assert float(got[2]) == pytest.approx(best, abs=1e-4)


def _check_budget_met(run_dir: Path, budget: int, before: dict[int, tuple]) -> optuna.Study:
    """Exactly `budget` counted trials, each once, the completed ones of before unchanged."""
    study = load(run_dir)
    counted = counted_trials(study)
    assert len(counted) == budget, [(t.number, t.user_attrs.get("status"), t.user_attrs.get("reason")) for t in counted]
    now = _completed(run_dir / "study.db")
    assert all(now.get(n) == v for n, v in before.items()), "a completed trial was lost or changed"
    table = pd.read_csv(run_dir / "trials.csv")
    assert len(table) == budget and table["trial"].is_unique
    return study


def running(run_dir: Path) -> set[int]:
    return {t.number for t in load(run_dir).get_trials(deepcopy=False, states=(TrialState.RUNNING,))}


def training_on(node, timeout: float = 120) -> None:
    """Block until a trial trains on `node` (Ray Tune's function trainables are titled so)."""
    deadline = time.time() + timeout
    while not any(c.startswith("ray::ImplicitFunc.train") for c in node.commands()):
        assert time.time() < deadline, f"no trial started on {node.name}"
        time.sleep(0.3)


def last_repeat(trials: list, t):
    """Where an interrupted trial's work ended: the driver queues a trial its node took down again
    with the same parameters and one more node loss, until one finishes."""
    while t.user_attrs.get("interrupted"):
        losses = t.user_attrs.get("node_losses", 0) + 1
        again = [u for u in trials[t.number + 1:] if u.params == t.params and u.user_attrs.get("node_losses") == losses]
        assert len(again) == 1, (t.number, [u.number for u in again])
        t = again[0]
    return t


def test_worker_nodes_die_mid_search_and_fresh_ones_take_over(cluster, tmp_path):
    # Two deaths in a row: a trial Ray Tune has retried once after the first is interrupted again by
    # the second, which its single retry (max_failures=1, for a worker that dies of its own trial)
    # cannot cover; a lost node is an interruption, so it runs again all the same.
    budget = 6
    nodes = [cluster.add_worker(cpus=2)]
    args = search_args(cluster.hidden, budget, "--no-validate")
    run_dir = enqueue_every_decoder(args)
    proc = driver(cluster, args + ["--resume"], tmp_path)
    interrupted, before = set(), {}
    try:
        wait_for_running(run_dir, proc)
        for _ in range(2):
            training_on(nodes[-1])
            assert nodes[-1].view(cluster.hidden) == []
            interrupted |= running(run_dir)
            nodes[-1].kill()
            before = _completed(run_dir / "study.db")
            time.sleep(3)  # the search has no node to run on for a moment
            nodes.append(cluster.add_worker(cpus=2))
        finish(proc)
    finally:
        kill_driver(proc)
    assert nodes[-1].view(cluster.hidden) == []
    study = _check_budget_met(run_dir, budget, before)
    trials = study.get_trials(deepcopy=False)
    requeued = sorted(t.number for t in trials if t.user_attrs.get("interrupted"))
    print(f"killed two worker nodes with trials {sorted(interrupted)} running; queued again by the driver: {requeued}")
    failed = [(t.number, t.user_attrs.get("reason")) for t in counted_trials(study) if t.user_attrs["status"] == "failed"]
    assert not failed, failed
    for n in interrupted:  # run again: Ray Tune's retry of the same trial, or queued again by the driver
        t = last_repeat(trials, trials[n])
        assert t.state == TrialState.COMPLETE, (n, t.user_attrs.get("status"), t.user_attrs.get("reason"))
    ran = ran_on(study)["trials"]
    assert nodes[-1].node_id in ran and ran <= {n.node_id for n in nodes}


def test_the_driver_is_killed_mid_search_and_resumed(cluster, tmp_path):
    budget = 6
    worker = cluster.add_worker(cpus=2)
    args = search_args(cluster.hidden, budget, "--no-validate")
    run_dir = enqueue_every_decoder(args)
    proc = driver(cluster, args + ["--resume"], tmp_path)
    try:
        wait_for_running(run_dir, proc)
    finally:
        kill_driver(proc)
    interrupted, before = running(run_dir), _completed(run_dir / "study.db")  # left RUNNING by the dead driver
    print(f"killed the driver with trials {sorted(interrupted)} running; {len(before)} completed before")
    assert interrupted
    out, _ = finish(driver(cluster, args + ["--resume"], tmp_path))
    assert f"resuming: {len(interrupted)} interrupted trial(s) queued again" in out
    study = _check_budget_met(run_dir, budget, before)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert all(trials[n].user_attrs.get("interrupted") for n in interrupted)  # marked, not counted; repeats are
    assert ran_on(study)["trials"] == {worker.node_id}
    assert worker.view(cluster.hidden) == []
