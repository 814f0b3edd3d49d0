"""Each distinct graph measured once on the --latency-target board, however many trials ask, and when.

Whoever needs a latency (a trial's worker, or the driver for the hypervolume reference and the
validated stage) exports the net at the deployment size with a fixed initialisation and keys the
graph by its structure (`graph_key`: the graph without its weights' values, and how it is timed),
so two trials of the same net share one key. The ledger, an actor on the driver's node, launches
the board's task the first time a key is asked for and hands everyone who asks the same reference,
finished or not: two trials of one net racing still cost one measurement.

The board's task asks for no CPU (no training is ever placed beside it) and for the resource
`target:NAME`, of which the board has 1 (one measurement at a time). The ledger (nas.target_actor)
launches it again after a lost board, so a trial whose board is gone or busy waits until it is back:
never a latency of 0, never a failure for it; a graph that crashes the board fails that trial with
one line instead of holding the board for ever. The driver copies finished measurements into the study (`target:<key>`),
where a resumed search's ledger starts from.
"""
from __future__ import annotations

import hashlib
import threading
import time
import uuid
from dataclasses import dataclass

import optuna

import lightseg_board
from search_spaces import ArchSpec

from .records import TrialKey, is_target_key, target_key
from .target_actor import Ledger, one_line
from .target import (IDENTITY, LatencyTarget, board_joined, check_board, describe_board, find_board,
                     refuse_dropped_target)

FLUSH_S = 5.0  # how often the driver copies finished measurements into the study
_FLOATS = (1, 10, 11, 16)  # ONNX's float, float16, double and bfloat16 element types
_VALUES = ("raw_data", "float_data", "double_data", "int32_data")  # where a tensor's elements are stored


def export_graph(spec: ArchSpec) -> bytes:
    """`spec` as an ONNX graph (batch 1, its input size), its weights initialised from a fixed seed."""
    import torch

    from search_spaces import build_model
    from trainers.deploy import onnx_bytes

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(spec)
    return onnx_bytes(model, spec)


def graph_key(graph: bytes, request: lightseg_board.Request) -> str:
    """The graph's structure (its float tensors' values left out: they do not change the time) and
    how it is timed, hashed: equal for two trials of the same net, whatever their weights."""
    import onnx

    model = onnx.load_from_string(graph)
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node for a in n.attribute if n.op_type == "Constant" and a.HasField("t")]
    for t in tensors:
        if t.data_type in _FLOATS:
            for name in _VALUES:
                t.ClearField(name)
    model.producer_name = model.producer_version = model.doc_string = ""
    digest = hashlib.sha256(model.SerializeToString(deterministic=True))
    digest.update(repr((request.threads, request.providers, request.warmup_s, request.runs)).encode())
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class TargetLatency:
    """One net's latency on the board: the graph's key and the measurement (lightseg_board.Measurement as a dict)."""

    target: str
    graph: str
    record: dict

    def costs(self, host: dict) -> dict:
        """A trial's latency fields: the board's figures, with the search host's (`host`, its costs) beside them."""
        return {"latency_ms": self.record["median_ms"], "latency_iqr_ms": self.record["iqr_ms"],
                TrialKey.LATENCY_MS_HOST: host["latency_ms"], TrialKey.LATENCY_IQR_MS_HOST: host["latency_iqr_ms"],
                **self.source()}

    def source(self) -> dict:
        """Which device and which measurement a latency comes from."""
        return {TrialKey.LATENCY_DEVICE: f"{TrialKey.DEVICE_PREFIX}{self.target}", TrialKey.TARGET_GRAPH: self.graph,
                TrialKey.TARGET_MEASUREMENT: self.record["id"]}


@dataclass(frozen=True)
class TargetClient:
    """What a trial calls (plain data, so it travels in a trial's config): a net's latency on the board."""

    ledger: str  # the ledger actor's name
    target: LatencyTarget
    runs: int

    @classmethod
    def named(cls, ledger: str | None, settings) -> TargetClient | None:
        """A trial's client of the ledger `ledger` (None: the search has no target)."""
        return None if ledger is None else cls(ledger, settings.latency_target, settings.latency_runs)

    def __call__(self, spec: ArchSpec) -> TargetLatency:
        import ray

        graph = export_graph(spec)
        lightseg_board.check_graph(graph)  # refused here, before the graph travels
        request = self.target.request(self.runs)
        key = graph_key(graph, request)
        ledger = ray.get_actor(self.ledger)
        found, seen = ray.get(ledger.ask.remote(key)), None
        while True:  # until measured, or failed for the graph (a lost board is launched again: nas.target_actor)
            if not found:
                found = ray.get(ledger.submit.remote(key, graph, request, seen))
            if "record" in found:
                return TargetLatency(self.target.name, key, found["record"])
            if "error" in found:
                raise RuntimeError(f"target {self.target.name}: {found['error']}")
            if "wait" in found:
                time.sleep(1.0)
            else:
                ref = found["ref"][0]
                try:
                    return TargetLatency(self.target.name, key, ray.get(ref).to_dict())
                except ray.exceptions.RayTaskError as exc:  # the board refused or failed this graph: one line
                    raise RuntimeError(f"target {self.target.name}: {one_line(exc)}") from None
                except ray.exceptions.RayError:  # its worker or node died: the ledger says what now
                    seen = ref.hex()
            found = ray.get(ledger.ask.remote(key, seen))


class TargetSession:
    """The driver's side of a search with a target: the board found and its facts checked against
    the study, the ledger started from the study's measurements, new ones copied back as they finish."""

    def __init__(self, target: LatencyTarget, runs: int, study: optuna.Study):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.facts = find_board(target)
        check_board(study, target, self.facts)
        self.study, self.target = study, target
        known = {k.split(":", 1)[1]: v for k, v in study.user_attrs.items() if is_target_key(k)}
        self.stored = set(known)
        name = f"lightseg-target-{uuid.uuid4().hex[:12]}"
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.actor = ray.remote(num_cpus=0, max_restarts=0)(Ledger).options(
            name=name, scheduling_strategy=here).remote(target.resource, known,
                                                        {k: self.facts[k] for k in IDENTITY if k in self.facts})
        self.client = TargetClient(name, target, runs)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_up, name="target-ledger", daemon=True)
        self._thread.start()

    def __call__(self, spec: ArchSpec) -> TargetLatency:
        return self.client(spec)

    def flush(self) -> None:
        """Store the measurements finished since the last flush in the study."""
        import ray

        for key, record in ray.get(self.actor.finished.remote(sorted(self.stored))).items():
            self.study.set_user_attr(target_key(key), record)
            self.stored.add(key)

    def _keep_up(self) -> None:
        """Every FLUSH_S: store what finished, and say when the board leaves the cluster or joins again
        (the trials stand still meanwhile, and the user should know why)."""
        import ray

        joined, paused = True, ""
        while not self._stop.wait(FLUSH_S):
            try:
                self.flush()
                now = ray.get(self.actor.paused.remote())
                if now != paused:
                    paused = now
                    print(f"\ntarget {self.target.name}: " + (f"{now}; measuring stands still (trials wait) until "
                          "the study's board joins instead" if now else "measuring again"), flush=True)
                if board_joined(self.target) != joined:
                    joined = not joined
                    join = self.target.join_command(ray.get_runtime_context().gcs_address)
                    print(f"\ntarget {self.target.name}: " + ("a board joined again; measuring" if joined else
                          f"its board left the Ray cluster; trials wait for it (on the board: {join})"), flush=True)
            except Exception:  # a busy database or cluster: the next round, or the last flush at close
                pass

    def latency_scale(self, space, settings) -> float:
        """The hypervolume reference's latency: twice the slowest preset's on the board, at the deployment
        size (as nas.study.reference_scales measures every other cost)."""
        from search_spaces import load_preset
        from search_spaces.presets import PRESET_NAMES

        inp = space.input
        presets = [load_preset(n, inp.height, inp.width, inp.num_classes, inp.in_channels) for n in PRESET_NAMES]
        return 2.0 * max(self(settings.deployed(spec)).record["median_ms"] for spec in presets)

    def isolated(self, specs: dict[str, dict]) -> dict[str, dict]:
        """The validated stage's latency alone for each of `specs` (study key -> spec): on the board
        every measurement is alone, so a graph measured in the search is not measured again."""
        out = {}
        for key, spec in specs.items():
            on_board = self(ArchSpec.from_dict(spec))
            out[key] = {"latency_ms": on_board.record["median_ms"], "latency_iqr_ms": on_board.record["iqr_ms"],
                        **on_board.source()}
        return out

    def close(self) -> None:
        import ray

        self._stop.set()
        self._thread.join()
        try:
            self.flush()
        finally:
            ray.kill(self.actor)


def open_board(settings, study: optuna.Study) -> TargetSession | None:
    """The session of the settings' --latency-target (None without one: then a study measured on a
    board is refused, since its latencies would be the search host's from here on; nas.search asks
    that already before Ray starts)."""
    target = settings.latency_target
    if target is not None:
        session = TargetSession(target, settings.latency_runs, study)
        print(f"latency measured on target {target.name}: {describe_board(session.facts)}")
        return session
    refuse_dropped_target(study)
    return None
