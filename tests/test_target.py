"""--latency-target without a cluster: what a board runs (lightseg_board), the graph's key, a trial
whose latency comes from the board, the flags' refusals, the board's facts on resume, the reports.

A board that never joins is one line within the timeout (a search of its own, with Ray: ~20 s); the
searches on a Ray cluster with a board node are tests/test_target_cluster.py (slow)."""
from __future__ import annotations

import json
import os
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
from nas import target_ledger as tg_ledger
from nas.study import open_study
from nas.target_actor import Ledger as _Ledger
from nas.target_ledger import TargetLatency, export_graph, graph_key
from nas.trial import Constraints, TrialSettings, evaluate_trial
from search_spaces.space import CORES, DECODERS, DOWNSAMPLERS
from trainers.data import load_data

from board_venv import doc_command
from helpers import refused, tiny_spec
from ray_cluster import Node, free_port, ray_env

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


def test_the_boards_cores_are_those_its_process_may_use(monkeypatch, tmp_path):
    from lightseg_board.measure import cores

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})  # taskset to 4 of the machine's cores
    quota = tmp_path / "cpu.max"
    assert cores(str(tmp_path / "none")) == 4
    quota.write_text("max 100000\n")
    assert cores(str(quota)) == 4
    quota.write_text("150000 100000\n")  # a container's --cpus 1.5: 2 cores busy at most
    assert cores(str(quota)) == 2
    quota.write_text("50000 100000\n")
    assert cores(str(quota)) == 1


def _edited(graph: bytes, edit) -> bytes:
    model = onnx.load_from_string(graph)
    edit(model)
    return model.SerializeToString()


def _sparse_constant(model, many: bool = False) -> None:
    """A Constant whose sparse value's elements lie in a file on the board."""
    values = onnx.helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.0])
    values.data_location = onnx.TensorProto.EXTERNAL
    values.ClearField("float_data")
    values.external_data.add(key="location", value="/etc/passwd")
    sparse = onnx.helper.make_sparse_tensor(values, onnx.helper.make_tensor("i", onnx.TensorProto.INT64, [1], [0]), [4])
    node = onnx.helper.make_node("Constant", [], ["c"])
    if many:
        node.attribute.append(onnx.AttributeProto(name="sparse_values", type=onnx.AttributeProto.SPARSE_TENSORS,
                                                  sparse_tensors=[sparse]))
    else:
        node.attribute.append(onnx.helper.make_attribute("sparse_value", sparse))
    model.graph.node.insert(0, node)


@pytest.mark.parametrize("edit,why", [
    (_sparse_constant, "operator Constant carries a sparse tensor"),
    (lambda m: _sparse_constant(m, many=True), "operator Constant carries a sparse tensor"),
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


@pytest.fixture(scope="module")
def local_board():
    """A Ray of this process that is a board too: no CPUs, no GPUs, one unit of target:tb."""
    import ray

    ray.shutdown()  # a search earlier in this process may have left its own Ray running
    ray_tmp = tempfile.mkdtemp(prefix="lst-")  # short socket paths
    ray.init(num_cpus=0, num_gpus=0, resources={"target:tb": 1}, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR", _temp_dir=ray_tmp)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_two_asking_for_one_graph_at_once_share_one_measurement(local_board):
    ray = local_board
    ledger = _Ledger("target:tb", {"old": {"id": "stored"}})  # its methods, called as the actor calls them: in turn
    assert ledger.ask("old") == {"record": {"id": "stored"}} and ledger.ask("k") == {}
    graph, request = export_graph(tiny_spec()), Request(runs=3, warmup_s=1.0)  # a second's warm-up: still running
    first, second = ledger.submit("k", graph, request), ledger.submit("k", graph, request)
    assert first["ref"][0] == second["ref"][0]  # the second asker waits for the first one's measurement
    measured = ray.get(first["ref"][0]).to_dict()
    assert measured["node"] == ray.get_runtime_context().get_node_id()
    assert ledger.ask("k") == {"record": measured} and ledger.finished(["old"]) == {"k": measured}


def _settled(ledger, key, seen, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = ledger.ask(key, seen)
        if "wait" not in found and "ref" not in found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{key}: still {found}")


def test_a_graph_that_crashes_the_board_fails_in_one_line_and_frees_it(local_board, monkeypatch):
    ray = local_board
    monkeypatch.setattr("nas.target_actor.GRACE_S", 0.5)  # no board node dies here: the crash is the graph's
    def crash(graph, request, expect=None):  # defined here: sent by value, as the tests are no package
        import os

        os._exit(9)  # as ONNX Runtime crashing, or the board's kernel killing the worker for memory

    ledger = _Ledger("target:tb", {})
    measuring = ledger.task
    ledger.task = ray.remote(crash).options(num_cpus=0, resources={"target:tb": 1}, max_retries=0)
    graph, request = export_graph(tiny_spec()), Request(runs=3, warmup_s=0.0)
    ref = ledger.submit("k", graph, request)["ref"][0]
    with pytest.raises(ray.exceptions.RayError):
        ray.get(ref)
    found = _settled(ledger, "k", ref.hex())
    assert found["error"].startswith("the board's worker died measuring this graph (ONNX Runtime crashed")
    assert len(found["error"].splitlines()) == 1 and "k" not in ledger.pending
    # the board is free: the same graph asked for again (a fixed board) is measured
    ledger.task = measuring
    again = ledger.submit("k", graph, request)
    assert ray.get(again["ref"][0]).median_ms > 0 and "record" in ledger.ask("k")
    # a graph ONNX Runtime refuses fails at once, and is dropped so it may be asked for again
    ledger.submit("bad", b"not a graph", request)
    bad = _settled(ledger, "bad", None)
    assert bad == {} and "bad" in ledger.failed and "not an ONNX" in ledger.failed["bad"][1]


def test_another_board_in_the_studys_place_stops_measuring(local_board):
    ledger = _Ledger("target:tb", {}, expect={"cpu": "Raspberry Pi 5 Model B Rev 1.0"})
    graph, request = export_graph(tiny_spec()), Request(runs=3, warmup_s=0.0)
    ref = ledger.submit("k", graph, request)["ref"][0]
    local_board.wait([ref])
    assert ledger.ask("k") == {"wait": True} and "k" not in ledger.done  # never timed on the wrong board
    assert ledger.paused().startswith("another board joined as the target (cpu: Raspberry Pi 5 Model B Rev 1.0 "
                                      "expected, ")


def test_the_board_is_found_once_it_runs_the_providers_asked_for(local_board):
    facts = tg.find_board(tg.LatencyTarget("tb", timeout_s=5))
    assert facts["node"] == local_board.get_runtime_context().get_node_id()
    assert facts["lightseg_board"] == lightseg_board.facts()["lightseg_board"]
    with pytest.raises(tg.TargetError, match=r"^--target-providers CUDAExecutionProvider: the board tb .* has no "):
        tg.find_board(tg.LatencyTarget("tb", providers=("CUDAExecutionProvider",), timeout_s=5))
    def _no_package():  # defined here: sent by value, as the tests are no package
        raise ModuleNotFoundError("No module named 'lightseg_board'")

    def _no_provider():
        raise RuntimeError("provider X: did not load (the session runs on CPUExecutionProvider)")

    node = tg.board_nodes(tg.LatencyTarget("tb"))[0]
    for fn, line in [(_no_package, "lacks lightseg_board; on the board, in the environment its ray runs from: "
                                   "pip install ./board"),
                     (_no_provider, "failed to run a graph: RuntimeError: provider X: did not load")]:
        with pytest.raises(tg.TargetError) as refused_:
            tg._on_board(tg.LatencyTarget("tb", timeout_s=5), node, "to run a graph", fn)
        assert line in str(refused_.value) and len(str(refused_.value).splitlines()) == 1


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


AT = ("--address", "127.0.0.1:1")  # --latency-target needs a cluster's address (refused before Ray is reached)


def test_the_target_travels_with_the_settings_and_is_part_of_the_trials_meaning():
    cfg = config_from_args(build_parser().parse_args(_args(*AT, "--latency-target", "pi5", "--target-threads", "4",
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
    ([*AT, "--latency-target", "my board"], "--latency-target 'my board': a name of letters, digits"),
    ([*AT, "--latency-target", "pi", "--target-threads", "0"], "--target-threads 0: must be at least 1"),
    ([*AT, "--latency-target", "pi", "--target-providers", ","], "--target-providers '': a comma list of ONNX Runtime"),
    ([*AT, "--latency-target", "pi", "--target-timeout", "0"], "--target-timeout 0: must be a positive number"),
    (["--target-threads", "2"], "--target-threads: needs --latency-target NAME"),
    ([*AT, "--latency-target", "pi", "--baseline", "x.yaml", "--within-baseline"], "--within-baseline with --latency-target"),
    (["--latency-target", "pi"], "--latency-target: needs --address HEAD:PORT of the cluster the board joined"),
])
def test_a_bad_target_flag_is_one_line(tmp_path, capsys, flags, line):
    err = refused(search_main, _args("--out", str(tmp_path), *flags), capsys)
    assert line in err
    assert not list(tmp_path.iterdir())


def test_a_resume_on_another_board_or_without_the_board_is_refused(monkeypatch):
    target = tg.LatencyTarget("pi5")
    study = optuna.create_study()
    tg.check_board(study, target, FACTS)
    assert study.user_attrs[StudyKey.TARGET_BOARD] == FACTS
    tg.check_board(study, target, {**FACTS, "host": "another-pi", "node": "cd"})  # an identical board will do
    with pytest.raises(tg.TargetError, match=r"measured on another board .*cpu: Raspberry Pi 5 Model B Rev 1.0 then, "
                                             r"Jetson Orin Nano now; cores: 4 then, 6 now"):
        tg.check_board(study, target, {**FACTS, "cpu": "Jetson Orin Nano", "cores": 6})
    with pytest.raises(tg.TargetError, match=r"providers: \['CPUExecutionProvider'\] then, \['XnnpackExecutionProvider'"):
        tg.check_board(study, target, {**FACTS, "providers": ["XnnpackExecutionProvider", "CPUExecutionProvider"]})
    # through the search's own path: the board's facts are checked before the ledger starts
    monkeypatch.setattr(tg_ledger, "find_board", lambda target: {**FACTS, "onnxruntime": "1.22.0"})
    settings = TrialSettings(epochs=1, latency_target=target)
    with pytest.raises(tg.TargetError, match=r"onnxruntime: 1.20.1 then, 1.22.0 now"):
        tg_ledger.open_board(settings, study)
    study.set_user_attr(StudyKey.TRIAL_MEANING, {"latency target": "pi5: onnxruntime ..."})
    with pytest.raises(tg.TargetError, match=r"measured latency on a board \(--latency-target pi5\); resume with it"):
        tg.refuse_dropped_target(study)
    tg.refuse_dropped_target(optuna.create_study())  # a study without a board resumes as before
    # a study whose meaning names a target refuses to go on without one, though no board was ever found
    found_none = optuna.create_study()
    found_none.set_user_attr(StudyKey.TRIAL_MEANING, {"latency target": "pi5: onnxruntime ..."})
    with pytest.raises(tg.TargetError, match=r"--latency-target pi5"):
        tg.refuse_dropped_target(found_none)


def test_a_board_is_not_recorded_in_a_study_whose_trials_were_measured_without_it():
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr(TrialKey.STATUS, "complete")
    study.tell(trial, 0.5)
    with pytest.raises(tg.TargetError, match=r"has trials whose latency was measured without a board"):
        tg.check_board(study, tg.LatencyTarget("pi5"), FACTS)
    assert StudyKey.TARGET_BOARD not in study.user_attrs


def test_a_resume_without_the_target_is_refused_by_the_search_in_one_line(tmp_path, capsys):
    """The real command: a study whose meaning names a board, resumed without --latency-target."""
    args = _args("--out", str(tmp_path), "--study", "s", "--no-presets", "--seed", "0")
    cfg = config_from_args(build_parser().parse_args(args))
    cfg.run_dir.mkdir(parents=True)
    study = open_study(cfg)
    study.set_user_attr(StudyKey.TRIAL_MEANING, {**cfg.trial_meaning(load_data(None, 32, 32, seed=0)),
                                                 "latency target": "pi5: onnxruntime CPUExecutionProvider"})
    err = refused(search_main, args + ["--resume"], capsys)
    assert "measured latency on a board (--latency-target pi5); resume with it" in err, err


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


def test_the_importance_table_and_marginals_name_the_board(tmp_path):
    from nas import insight
    from test_insight import synthetic_table

    table = synthetic_table(seed=1)
    importance, found = insight.effects(table, ["miou", "latency_ms"], "target pi5")
    assert [c.split(" (")[0] for c in importance.columns] == ["miou", "latency_ms on target pi5"]
    said = {e.metric: e.sentence() for e in found}
    assert said["latency_ms"].startswith("latency ms on target pi5: ") and said["miou"].startswith("mIoU (")
    assert insight.metric_label("latency_ms", "target pi5") == "latency ms on target pi5"
    assert insight.metric_label("gmacs", "target pi5") == "GMACs" and insight.metric_label("latency_ms") == "latency ms"


def test_the_join_command_is_what_the_docs_print():
    join = tg.LatencyTarget("pi5").join_command("HOST:6379")
    assert join == "ray start --address HOST:6379 --num-cpus 0 --num-gpus 0 --resources '{\"target:pi5\": 1}'"
    assert doc_command("~/lightseg-board/bin/ray start") == "~/lightseg-board/bin/" + join


# --- a board that never joins, a node that is no board ------------------------------------------
def test_a_board_that_never_joins_or_offers_cpus_is_one_line(tmp_path):
    """A head of its own (with 1 CPU and target:busy: a node a board must not be); the search on it
    with --latency-target ghost waits 5 s and says what to run on the board, with busy refuses the node."""
    tag = f"/tmp/lst-{os.getpid()}-g"  # short socket paths
    port = free_port()
    head = Node("head", ["ray", "start", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
                         "--resources", json.dumps({"target:busy": 1}), "--include-dashboard=false",
                         f"--temp-dir={tag}", "--block"], Path(tag), tmp_path / "head.log", isolated=False)
    env = ray_env(LIGHTSEG_CACHE=str(tmp_path / "cache"))
    address = f"127.0.0.1:{port}"

    def search(name: str) -> tuple[subprocess.CompletedProcess, float]:
        cmd = [sys.executable, "-m", "nas.search", "--budget", "1", "--epochs", "1", "--size", "32x32", "--no-presets",
               "--out", str(tmp_path / name), "--address", address, "--latency-target", name, "--target-timeout", "5"]
        started = time.time()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        return done, time.time() - started

    try:
        (ghost, took), (busy, _) = search("ghost"), search("busy")
    finally:
        head.kill()
        shutil.rmtree(tag, ignore_errors=True)
    join = "ray start --address {} --num-cpus 0 --num-gpus 0 --resources '{{\"target:{}\": 1}}'"
    err = ghost.stderr.strip()
    assert ghost.returncode == 2 and len(err.splitlines()) == 1, err[-3000:]
    address = err.split(" at ")[1].split(" ")[0]  # the head's, as its node names it
    assert address.endswith(f":{port}") and err == (
        f"error: --latency-target ghost: no board joined the Ray cluster at {address} in 5 s; "
        f"on the board run: {join.format(address, 'ghost')}")
    assert took < 120  # the driver's start and the 5 s, not minutes
    err = busy.stderr.strip()
    assert busy.returncode == 2 and len(err.splitlines()) == 1, err[-3000:]
    assert err.startswith("error: --latency-target busy: the node at ") and err.endswith(
        " offers target:busy: 1, CPU: 1, GPU: 0 (a board offers 1, 0 and 0: no training beside a measurement); "
        "start it with: " + join.format(address, "busy")), err
