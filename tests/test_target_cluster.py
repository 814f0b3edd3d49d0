"""--latency-target on a Ray cluster of one machine (slow): a head that runs the trials and a board
node on loopback that joined as the docs say (`ray start --num-cpus 0 --resources '{"target:NAME": 1}'`),
run from an environment that holds only the board package (tests/board_venv.py) where pip can
install one, else from the tests' own.

Every latency is measured on the board, none beside a training, each distinct graph once (two trials
of one net racing included); a board killed mid-search and started again leaves the budget met,
nothing failed and no latency of 0. (A board that never joins: tests/test_target.py.)
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from nas.pareto import counted_trials
from nas.records import is_target_key, storage_url
from nas.search import build_parser, config_from_args
from nas.study import open_study, study_space
from trainers.data import load_data

from board_venv import board_env, board_join_command  # noqa: F401 (the fixture)
from ray_cluster import BIN, Node, free_port, ray_env

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
NAME = "tb"
STUDY = "t"


class BoardCluster:
    """A head with 2 CPUs for the trials, and board nodes: no CPUs, the resource target:NAME."""

    def __init__(self, logs: Path, board_bin: Path):
        self.logs, self.board_bin = logs, board_bin
        logs.mkdir(parents=True, exist_ok=True)
        self.tag = f"/tmp/lst-{os.getpid()}"  # Ray's socket paths must stay short
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.boards: list[Node] = []
        self.head = Node("head", ["ray", "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                                  "--include-dashboard=false", f"--temp-dir={self.tag}-h", "--block"],
                         Path(f"{self.tag}-h"), logs / "head.log", isolated=False)

    def start_board(self) -> Node:
        name = f"board{len(self.boards) + 1}"
        args = board_join_command(self.board_bin, self.address, NAME) + [f"--temp-dir={self.tag}-{name}", "--block"]
        self.boards.append(Node(name, args, Path(f"{self.tag}-{name}"), self.logs / f"{name}.log", isolated=False))
        return self.boards[-1]

    def close(self) -> None:
        for node in [*self.boards, self.head]:
            node.kill()
            shutil.rmtree(node.temp, ignore_errors=True)


@pytest.fixture
def cluster(tmp_path, request):
    try:
        board_bin = request.getfixturevalue("board_env")  # the board's own environment, without torch
    except pytest.skip.Exception:
        board_bin = BIN  # pip cannot reach an index here: the tests' environment stands in
    c = BoardCluster(tmp_path / "ray-logs", board_bin)
    try:
        yield c
    finally:
        c.close()


def search_args(out: Path, budget: int, *extra: str) -> list[str]:
    return ["--budget", str(budget), "--epochs", "1", "--size", "32x32", "--val-size", "32x32", "--no-presets",
            "--out", str(out), "--study", STUDY, "--seed", "0", "--max-concurrent", "2", "--latency-target", NAME,
            "--target-timeout", "60", *extra]


def driver(cluster: BoardCluster, args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = ray_env(LIGHTSEG_CACHE=str(tmp_path / "cache"))
    with open(tmp_path / "driver.out", "w") as out, open(tmp_path / "driver.err", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "nas.search", "--address", cluster.address, *args], cwd=ROOT,
                                env=env, stdout=out, stderr=err, text=True, start_new_session=True)
    proc.log = tmp_path
    return proc


def finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    try:
        proc.wait(timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out, err = (proc.log / "driver.out").read_text(), (proc.log / "driver.err").read_text()
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    return out


def load(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=storage_url(run_dir))


def measurements(study: optuna.Study) -> dict[str, dict]:
    return {k.split(":", 1)[1]: v for k, v in study.user_attrs.items() if is_target_key(k)}


def test_every_latency_is_measured_on_the_board_once_per_graph(cluster, tmp_path):
    board = cluster.start_board()
    args = search_args(tmp_path / "out", 4, "--val-epochs", "1", "--val-max", "2")
    cfg = config_from_args(build_parser().parse_args(["--address", cluster.address, *args]))
    cfg.run_dir.mkdir(parents=True)
    study, data = open_study(cfg), load_data(None, 32, 32, seed=0)
    space = study_space(data, 32, 32)
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    twin, other = (space.encode(space.sample(sampler.ask())) for _ in range(2))
    for params in (twin, twin, other):  # the twins start together (2 at a time) and race for one measurement
        study.enqueue_trial(params)
    out = finish(driver(cluster, args + ["--resume"], tmp_path))
    assert f"latency measured on target {NAME}" in out

    study = load(cfg.run_dir)
    trials, records = counted_trials(study), measurements(study)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    # every measurement ran on the board, one at a time; each trial's latency is one of them
    assert records and {r["node"] for r in records.values()} == {board.node_id}
    spans = sorted((r["started_at"], r["finished_at"]) for r in records.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    for t in trials:
        a = t.user_attrs
        assert a["latency_device"] == f"target:{NAME}" and a["latency_ms_host"] > 0
        assert a["target_measurement"] == records[a["target_graph"]]["id"]
        assert a["latency_ms"] == records[a["target_graph"]]["median_ms"] > 0
    # each distinct graph once: the twins share one measurement
    twins = trials[:2]  # queued first
    assert twins[0].user_attrs["spec"] == twins[1].user_attrs["spec"] != trials[2].user_attrs["spec"]
    assert len({t.user_attrs["target_measurement"] for t in twins}) == 1
    assert len({t.user_attrs["target_graph"] for t in trials}) == len({t.user_attrs["target_measurement"] for t in trials})
    # no training beside a measurement: the trials and the validation trainings ran on the head
    validated = [v for k, v in study.user_attrs.items() if k.startswith("validated:")]
    assert validated and {v["node"] for v in validated} | {t.user_attrs["node"] for t in trials} == {cluster.head.node_id}
    # the validated stage's latency alone is the board's too (each graph measured once: no new measurement)
    isolated = [v for k, v in study.user_attrs.items() if k.startswith("isolated:")]
    assert isolated and all(v["target_measurement"] == records[v["target_graph"]]["id"] for v in isolated)
    # the board's facts in the study and config.yaml; trials.csv says where each latency is from
    config = yaml.safe_load((cfg.run_dir / "config.yaml").read_text())
    assert config["target_board"]["node"] == board.node_id and config["settings"]["latency_target"]["name"] == NAME
    table = pd.read_csv(cfg.run_dir / "trials.csv")
    assert set(table["latency_device"]) == {f"target:{NAME}"} and table["latency_ms_host"].gt(0).all()
    if cluster.board_bin != BIN:  # the board ran from its own environment, which has no torch
        assert any(str(cluster.board_bin) in c for c in board.commands())


def test_a_board_killed_mid_search_and_started_again(cluster, tmp_path):
    first = cluster.start_board()
    args = search_args(tmp_path / "out", 4, "--no-validate")
    proc = driver(cluster, args, tmp_path)
    run_dir = tmp_path / "out" / STUDY
    deadline = time.time() + 300
    while not running(proc, run_dir):
        assert proc.poll() is None and time.time() < deadline, (proc.log / "driver.err").read_text()[-3000:]
        time.sleep(0.5)
    first.kill()  # the trials running wait for a board; the others queue behind them
    time.sleep(8)
    second = cluster.start_board()
    finish(proc)

    study = load(run_dir)
    trials = counted_trials(study)
    seen = [(t.number, t.user_attrs["status"], t.user_attrs.get("reason"), t.user_attrs.get("latency_ms")) for t in trials]
    assert len(trials) == 4 and [s for _, s, _, _ in seen] == ["complete"] * 4, seen
    assert all(t.user_attrs["latency_ms"] > 0 for t in trials), seen
    # none failed, counted or not: a trial that waited for the board was never failed and queued again
    failed = [(t.number, t.user_attrs.get("reason")) for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
    assert not failed, failed
    nodes = {r["node"] for r in measurements(study).values()}
    assert second.node_id in nodes and nodes <= {first.node_id, second.node_id}, (nodes, first.node_id, second.node_id)


def running(proc: subprocess.Popen, run_dir: Path) -> bool:
    """Whether the search in `run_dir` has a trial running. Its database is read only once the driver
    says it runs trials: opening it earlier would race the driver making its tables."""
    if f"study {STUDY}: " not in (proc.log / "driver.out").read_text():
        return False
    return bool(load(run_dir).get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
