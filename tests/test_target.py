"""--latency-target without a cluster: what a board runs (lightseg_board), the graph's key, a trial
whose latency comes from the board, the flags' refusals, the board's facts on resume, the reports.

A board that never joins is one line within the timeout (a search of its own, with Ray: ~20 s); the
searches on a Ray cluster with a board node are tests/test_target_cluster.py (slow)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
import optuna
import pandas as pd
import pytest

import lightseg_board
from lightseg_board import GraphRefused, Request, check_graph, measure
from nas import target as tg
from nas.pareto import OBJECTIVES
from nas.records import StudyKey, TrialKey, target_key
from nas.search import build_parser, config_from_args
from nas.search import main as search_main
from nas.target_ledger import TargetLatency, export_graph, graph_key
from nas.trial import Constraints, TrialSettings, evaluate_trial
from search_spaces.space import CORES, DECODERS, DOWNSAMPLERS
from trainers.data import load_data

from helpers import refused, tiny_spec
from ray_cluster import ray_env

ROOT = Path(__file__).resolve().parent.parent

FACTS = {"host": "pi", "cpu": "Raspberry Pi 5 Model B Rev 1.0", "cores": 4, "machine": "aarch64",
         "onnxruntime": "1.20.1", "providers": ["CPUExecutionProvider"], "node": "ab"}


@pytest.fixture(scope="module")
def graph() -> bytes:
    return export_graph(tiny_spec(tvconv_from=2, decoder="dupsample", ratio=2))


# --- the board's side ---------------------------------------------------------------------------
def test_the_board_times_a_graph_with_the_threads_and_providers_asked_for(graph):
    m = measure(graph, Request(threads=1, runs=8, warmup_s=0.05))
    assert m.runs == 8 and m.warmup_runs >= 1 and m.threads == 1 and m.providers[0] == "CPUExecutionProvider"
    assert 0 < m.min_ms <= m.median_ms and m.p10_ms <= m.median_ms <= m.p90_ms and m.iqr_ms >= 0
    assert m.started_at <= m.finished_at and m.pid > 0 and m.node == "" and len(m.id) == 32
    assert json.loads(json.dumps(m.to_dict()))["median_ms"] == m.median_ms  # stored as plain data
    with pytest.raises(RuntimeError, match="provider TensorrtExecutionProvider: not in this board's onnxruntime"):
        measure(graph, Request(providers=("TensorrtExecutionProvider",), runs=2))
    with pytest.raises(ValueError):
        Request(runs=1)


def test_the_board_knows_its_facts():
    facts = lightseg_board.facts()
    assert facts["cores"] >= 1 and facts["cpu"] and "CPUExecutionProvider" in facts["providers"]
    assert set(tg.IDENTITY) <= set(facts)


def _edited(graph: bytes, edit) -> bytes:
    model = onnx.load_from_string(graph)
    edit(model)
    return model.SerializeToString()


@pytest.mark.parametrize("edit,why", [
    (lambda m: setattr(m.graph.node[0], "domain", "com.microsoft"), "operator com.microsoft."),
    (lambda m: setattr(m.graph.node[0], "op_type", "Loop"), "operator Loop: not one the search's networks export to"),
    (lambda m: m.opset_import.add(domain="ai.custom", version=1), "operator set domain 'ai.custom'"),
    (lambda m: m.graph.initializer[0].external_data.add(key="location", value="/etc/passwd"), "external data"),
])
def test_the_board_refuses_what_is_not_the_searchs_own_graph(graph, edit, why):
    with pytest.raises(GraphRefused, match=why):
        measure(_edited(graph, edit))


def test_the_board_refuses_a_graph_beyond_its_size_bound(monkeypatch, graph):
    monkeypatch.setattr(lightseg_board.graph, "MAX_GRAPH_MB", 0.01)
    with pytest.raises(GraphRefused, match="larger than the 0.01 MB a board accepts"):
        check_graph(graph)
    with pytest.raises(GraphRefused, match="not an ONNX"):
        check_graph(b"\x0a\xff")


def test_every_block_family_exports_to_operators_the_board_runs():
    specs = [tiny_spec(core=core, decoder=DECODERS[i % len(DECODERS)], downsampler=DOWNSAMPLERS[i % len(DOWNSAMPLERS)],
                       ratio=(1, 2)[i % 2], tvconv_from=i % 3, kernel=(3, 5)[i % 2]) for i, core in enumerate(CORES)]
    seen = set()
    for spec in specs:
        seen |= set(check_graph(export_graph(spec)))
    assert seen <= lightseg_board.ALLOWED_OPS
    assert seen <= lightseg_board.graph.EXPORTED_OPS  # the list names what the nets export to


# --- the graph's key: two trials of one net cost one measurement ---------------------------------
def test_the_key_is_the_nets_structure_and_how_it_is_timed(graph):
    spec = tiny_spec(tvconv_from=2, decoder="dupsample", ratio=2)
    request = Request(runs=30)
    key = graph_key(graph, request)
    # the same net exported again has the same key, though its float weights may differ in the last bits
    # (TVConv's kernels, computed at whatever thread count torch has)
    assert graph_key(export_graph(spec), request) == key

    def scale_weights(model):
        t = next(t for t in model.graph.initializer if t.data_type == 1 and t.raw_data)
        t.raw_data = bytes(len(t.raw_data))  # other weights, the same net: the same time
    assert graph_key(_edited(graph, scale_weights), request) == key
    assert graph_key(export_graph(tiny_spec(tvconv_from=2, decoder="dupsample", ratio=1)), request) != key
    assert graph_key(graph, Request(runs=30, threads=2)) != key
    assert graph_key(graph, Request(runs=30, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))) != key


def test_two_asking_for_one_graph_at_once_share_one_measurement(tmp_path):
    import ray

    from nas.target_ledger import _Ledger

    ray_tmp = tempfile.mkdtemp(prefix="lst-")  # short socket paths
    ray.init(num_cpus=1, resources={"target:tb": 1}, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", _temp_dir=ray_tmp)
    try:
        ledger = _Ledger("target:tb", {"old": {"id": "stored"}})  # its methods, called as the actor calls them: in turn
        assert ledger.ask("old") == {"record": {"id": "stored"}} and ledger.ask("k") == {}
        graph, request = export_graph(tiny_spec()), Request(runs=3, warmup_s=1.0)  # a second's warm-up: still running
        first, second = ledger.submit("k", graph, request), ledger.submit("k", graph, request)
        assert first["ref"][0] == second["ref"][0]  # the second asker waits for the first one's measurement
        measured = ray.get(first["ref"][0]).to_dict()
        assert measured["node"] == ray.get_runtime_context().get_node_id()
        assert ledger.ask("k") == {"record": measured} and ledger.finished(["old"]) == {"k": measured}
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


# --- a trial measured on the board ------------------------------------------------------------
def _board(latency_ms: float):
    record = {"median_ms": latency_ms, "iqr_ms": 0.01, "id": "m1", "node": "board"}
    seen = []

    def board(spec):
        seen.append(spec)
        return TargetLatency("pi", "k1", record)
    board.seen = seen
    return board


def test_the_boards_latency_decides_the_constraint_and_the_hosts_stays_beside_it():
    data = load_data(None, 32, 64, seed=0, n_train=4, n_val=2)
    spec = tiny_spec(height=32, width=64, num_classes=data.info.num_classes)
    settings = TrialSettings(epochs=1, latency_runs=3, latency_backend="onnxruntime", deploy_size=(64, 128),
                             constraints=Constraints(max_latency_ms=50.0))
    slow = _board(80.0)
    got = evaluate_trial(spec, data, settings, board=slow)
    assert got["status"] == "infeasible" and got["reason"] == "latency_ms 80 > 50"
    assert got["latency_ms"] == 80.0 and 0 < got["latency_ms_host"] < 50 and got["latency_device"] == "target:pi"
    assert got["target_graph"] == "k1" and got["target_measurement"] == "m1"
    assert (slow.seen[0].input.height, slow.seen[0].input.width) == (64, 128)  # at the deployment size
    fast = evaluate_trial(spec, data, settings, board=_board(5.0))
    assert fast["status"] == "complete" and fast["latency_ms"] == 5.0 and "latency_device" in fast


# --- flags, settings, resume --------------------------------------------------------------------
def _args(*extra) -> list[str]:
    return ["--budget", "2", "--epochs", "1", "--size", "32x32", *extra]


def test_the_target_travels_with_the_settings_and_is_part_of_the_trials_meaning():
    cfg = config_from_args(build_parser().parse_args(_args("--latency-target", "pi5", "--target-threads", "4",
                                                           "--target-providers", "XnnpackExecutionProvider,CPUExecutionProvider")))
    target = cfg.settings.latency_target
    assert target == tg.LatencyTarget("pi5", 4, ("XnnpackExecutionProvider", "CPUExecutionProvider"))
    again = TrialSettings.from_dict(json.loads(json.dumps(cfg.settings.to_dict())))
    assert again == cfg.settings
    data = load_data(None, 32, 32, seed=0, n_train=4, n_val=2)
    assert cfg.trial_meaning(data)["latency target"] == (
        "pi5: onnxruntime XnnpackExecutionProvider,CPUExecutionProvider, 4 thread(s), warm-up 1 s, median of 30 runs")
    assert cfg.to_dict()["settings"]["latency_target"]["name"] == "pi5"
    plain = config_from_args(build_parser().parse_args(_args()))
    assert "latency target" not in plain.trial_meaning(data) and "latency_target" not in plain.to_dict()["settings"]
    assert TrialSettings.from_dict({**plain.settings.to_dict(), "latency_target": None}).latency_target is None


@pytest.mark.parametrize("flags,line", [
    (["--latency-target", "my board"], "--latency-target 'my board': a name of letters, digits"),
    (["--latency-target", "pi", "--target-threads", "0"], "--target-threads 0: must be at least 1"),
    (["--latency-target", "pi", "--target-providers", ","], "--target-providers '': a comma list of ONNX Runtime"),
    (["--latency-target", "pi", "--target-timeout", "0"], "--target-timeout 0: must be a positive number"),
    (["--target-threads", "2"], "--target-threads: needs --latency-target NAME"),
    (["--latency-target", "pi", "--baseline", "x.yaml", "--within-baseline"], "--within-baseline with --latency-target"),
])
def test_a_bad_target_flag_is_one_line(tmp_path, capsys, flags, line):
    err = refused(search_main, _args("--out", str(tmp_path), *flags), capsys)
    assert line in err
    assert not list(tmp_path.iterdir())


def test_a_resume_on_another_board_or_without_the_board_is_refused():
    target = tg.LatencyTarget("pi5")
    study = optuna.create_study()
    tg.check_board(study, target, FACTS)
    assert study.user_attrs[StudyKey.TARGET_BOARD] == FACTS
    tg.check_board(study, target, {**FACTS, "host": "another-pi", "node": "cd"})  # an identical board will do
    with pytest.raises(tg.TargetError, match=r"measured on another board .*cpu: Raspberry Pi 5 Model B Rev 1.0 then, "
                                             r"Jetson Orin Nano now; cores: 4 then, 6 now"):
        tg.check_board(study, target, {**FACTS, "cpu": "Jetson Orin Nano", "cores": 6})
    study.set_user_attr(StudyKey.TRIAL_MEANING, {"latency target": "pi5: onnxruntime ..."})
    with pytest.raises(tg.TargetError, match=r"measured latency on a board \(--latency-target pi5\); resume with it"):
        tg.refuse_dropped_target(study)
    tg.refuse_dropped_target(optuna.create_study())  # a study without a board resumes as before


def test_the_reports_say_where_each_latency_is_from():
    config = {"settings": {"latency_target": {"name": "pi5"}}, StudyKey.TARGET_BOARD: FACTS}
    assert tg.latency_source(config) == "target pi5 (Raspberry Pi 5 Model B Rev 1.0, 4 cores, aarch64, onnxruntime 1.20.1 on pi)"
    latency = tg.labelled([OBJECTIVES["miou"], OBJECTIVES["latency"]], config)[1]
    assert latency.label == "latency (ms, batch 1, median) on target pi5" and latency.key == "latency_ms"
    assert tg.latency_source({"settings": {}}) is None

    study = optuna.create_study()
    for n, host in enumerate((1.5, None)):
        trial = study.ask()
        attrs = {TrialKey.STATUS: "complete", **({"latency_ms_host": host, "latency_device": "target:pi5"} if host else {})}
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        study.tell(trial, 0.5)
    table = pd.DataFrame({"trial": [0, 1], "latency_ms": [9.0, 8.0], "latency_iqr_ms": [0.1, 0.1], "x": [1, 2]})
    shown = tg.with_target_columns(table, study)
    assert list(shown.columns) == ["trial", "latency_ms", "latency_iqr_ms", "latency_device", "latency_ms_host", "x"]
    assert shown["latency_ms_host"].tolist()[0] == 1.5 and pd.isna(shown["latency_ms_host"].tolist()[1])
    assert tg.with_target_columns(table.iloc[:0], study).empty
    assert target_key("abc") == "target:abc"


def test_the_join_command_is_what_the_docs_print():
    assert tg.LatencyTarget("pi5").join_command("10.0.0.2:6379") == (
        "ray start --address 10.0.0.2:6379 --num-cpus 0 --resources '{\"target:pi5\": 1}'")


# --- a board that never joins ------------------------------------------------------------------
def test_a_board_that_never_joins_is_one_line_within_the_timeout(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="lst-")  # a Ray of its own, short socket paths
    env = ray_env(LIGHTSEG_CACHE=str(tmp_path / "cache"), LIGHTSEG_RAY_TMP=ray_tmp)
    cmd = [sys.executable, "-m", "nas.search", "--budget", "1", "--epochs", "1", "--size", "32x32", "--no-presets",
           "--out", str(tmp_path / "out"), "--latency-target", "ghost", "--target-timeout", "5"]
    started = time.time()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1, err[-3000:]
    assert err.startswith("error: --latency-target ghost: no board joined the Ray cluster at ")
    assert err.endswith("in 5 s; on the board run: ray start --address " + err.split(" at ")[1].split(" ")[0]
                        + " --num-cpus 0 --resources '{\"target:ghost\": 1}'")
    assert time.time() - started < 120  # Ray's start and the 5 s, not minutes
    assert not (tmp_path / "out").exists()  # nothing left behind: the retry is no "existing run"
