"""`--latency-target NAME`: every latency measured on the device users ship to, while training stays put.

The board joins the search's Ray cluster as a node with no CPUs (so no training is ever placed on
it) and a resource `target:NAME` of 1 (so it times one graph at a time):

    ray start --address HEAD:6379 --num-cpus 0 --num-gpus 0 --resources '{"target:NAME": 1}'

A trial exports its network to ONNX and the board times the graph (`lightseg_board`, which needs
only NumPy, ONNX Runtime and Ray there); `nas.target_ledger` measures each distinct graph once.
This module holds the setting, finds the board at start and records its facts in the study, so
that a resume on another board is refused. Why a Ray node rather than an agent of our own, what a
board installs and what joining gives away: docs/measuring-on-your-device.md.
"""
from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass, replace
from typing import Sequence

import optuna
import pandas as pd

import lightseg_board

from .cli import UsageError
from .pareto import counted_trials
from .records import TARGET_COLUMNS, StudyKey, TrialKey

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# the facts that make two boards time alike: a resumed study must be measured on such a board
IDENTITY = ("cpu", "cores", "machine", "onnxruntime", "providers", "lightseg_board")


@dataclass(frozen=True)
class LatencyTarget:
    """The board every latency is measured on, and how ONNX Runtime runs there."""

    name: str
    threads: int = 1
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    warmup_s: float = 1.0  # warm-up by time, as a slow board needs fewer runs than a fast one
    timeout_s: float = 120.0  # how long the start waits for the board to join

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name or ""):
            raise UsageError(f"--latency-target {self.name!r}: a name of letters, digits, '.', '_' or '-' "
                             "(the board joins with the resource target:NAME)")
        if self.threads < 1:
            raise UsageError(f"--target-threads {self.threads}: must be at least 1")
        if not self.providers or not all(_NAME.fullmatch(p) for p in self.providers):
            raise UsageError(f"--target-providers {','.join(self.providers)!r}: a comma list of ONNX Runtime "
                             "execution providers, e.g. CUDAExecutionProvider,CPUExecutionProvider")
        if not self.timeout_s > 0:
            raise UsageError(f"--target-timeout {self.timeout_s:g}: must be a positive number of seconds")
        object.__setattr__(self, "providers", tuple(self.providers))

    @classmethod
    def from_dict(cls, d: dict) -> LatencyTarget:
        return cls(**{**d, "providers": tuple(d["providers"])})

    @property
    def resource(self) -> str:
        return f"{TrialKey.DEVICE_PREFIX}{self.name}"  # also the label of the latencies it measured

    def request(self, runs: int) -> lightseg_board.Request:
        return lightseg_board.Request(self.threads, self.providers, self.warmup_s, runs)

    def describe(self, runs: int) -> str:
        """The setting as a study's trial meaning records it."""
        return (f"{self.name}: onnxruntime {','.join(self.providers)}, {self.threads} thread(s), "
                f"warm-up {self.warmup_s:g} s, median of {runs} runs")

    def join_command(self, address: str) -> str:
        """What a user types on the board to join as this target."""
        return f"ray start --address {address} --num-cpus 0 --num-gpus 0 --resources '{{\"{self.resource}\": 1}}'"


def add_target_flags(parser: argparse.ArgumentParser) -> None:
    t = parser.add_argument_group("latency on your device", "every latency measured on a board that joined the Ray "
                                  "cluster as target:NAME, training staying where it is "
                                  "(docs/measuring-on-your-device.md)")
    t.add_argument("--latency-target", default=None, metavar="NAME",
                   help="the board's name: it joins with ray start --num-cpus 0 --num-gpus 0 --resources "
                   "'{\"target:NAME\": 1}' (needs --address)")
    t.add_argument("--target-threads", type=int, default=None,
                   help=f"ONNX Runtime's intra-op threads on the board (default {LatencyTarget.threads})")
    t.add_argument("--target-providers", default=None, help="ONNX Runtime's execution providers on the board, in "
                   f"order of preference (default {','.join(LatencyTarget.providers)})")
    t.add_argument("--target-timeout", type=float, default=None,
                   help=f"seconds the start waits for the board to join (default {LatencyTarget.timeout_s:g})")


def target_from_args(args: argparse.Namespace) -> LatencyTarget | None:
    """The target the flags name; None without --latency-target (then its other flags are refused)."""
    flags = {"--target-threads": args.target_threads, "--target-providers": args.target_providers,
             "--target-timeout": args.target_timeout}
    if args.latency_target is None:
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            raise UsageError(f"{given[0]}: needs --latency-target NAME (the board that measures latency)")
        return None
    if not args.address:  # a private Ray started here has no board, and no board could join it
        raise UsageError("--latency-target: needs --address HEAD:PORT of the cluster the board joined")
    if args.within_baseline and "latency" in args.objectives:
        raise UsageError("--within-baseline with --latency-target: the baseline's latency would be the search host's; "
                         "give the board's limit as --max-latency-ms")
    d = LatencyTarget
    providers = d.providers if args.target_providers is None else tuple(
        p.strip() for p in args.target_providers.split(",") if p.strip())
    return LatencyTarget(args.latency_target, d.threads if args.target_threads is None else args.target_threads,
                         providers, timeout_s=d.timeout_s if args.target_timeout is None else args.target_timeout)


class TargetError(RuntimeError):
    """The board cannot serve the search as asked (never joined, lacks a provider, is another board than
    the study's); one line saying what to do, which the command line prints as a usage error."""


def board_nodes(target: LatencyTarget) -> list[dict]:
    """The live nodes of the Ray cluster that offer the target's resource."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(target.resource)]


def board_joined(target: LatencyTarget) -> bool:
    """Whether a live node of the Ray cluster offers the target's resource."""
    return bool(board_nodes(target))


def _probe_graph() -> bytes:
    """A graph of one Relu, for the board to open a session with the providers asked for."""
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 2, 2]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", io[:1], io[1:])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def _on_board(target: LatencyTarget, node: dict, what: str, fn, *args):
    """`fn(*args)` run on the board's node, as its Ray task; one line naming what to do when it fails there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(fn).options(num_cpus=0, resources={target.resource: 1}, max_retries=0,
                                  scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
    try:
        return ray.get(task.remote(*args), timeout=target.timeout_s + 60)
    except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError) as exc:
        cause = getattr(exc, "cause", None) or exc
        lines = str(cause).strip().splitlines()
        if "No module named 'lightseg_board'" in str(exc):
            why = ("lacks lightseg_board; on the board, in the environment its ray runs from: pip install ./board "
                   "(this checkout's board/ folder)")
        else:
            why = f"{type(cause).__name__}: {lines[-1] if lines else ''}"
        raise TargetError(f"--latency-target {target.name}: the board ({node.get('NodeManagerAddress')}) "
                          f"failed {what}: {why}") from None


def find_board(target: LatencyTarget) -> dict:
    """Wait up to the target's timeout for its board in the Ray cluster; returns the board's facts
    (lightseg_board.facts, with its node), once it has opened a session with the providers asked for.
    One line saying what to run on the board otherwise."""
    import ray

    deadline = time.monotonic() + target.timeout_s
    while not board_joined(target):
        if time.monotonic() > deadline:
            address = ray.get_runtime_context().gcs_address
            raise TargetError(f"--latency-target {target.name}: no board joined the Ray cluster at {address} in "
                               f"{target.timeout_s:g} s; on the board run: {target.join_command(address)}")
        time.sleep(0.5)
    nodes = board_nodes(target)
    join = target.join_command(ray.get_runtime_context().gcs_address)
    if len(nodes) != 1:
        raise TargetError(f"--latency-target {target.name}: {len(nodes)} nodes offer {target.resource} (at "
                          f"{', '.join(n.get('NodeManagerAddress', '?') for n in nodes)}); exactly one board joins, "
                          f"with: {join}")
    node = nodes[0]
    offered = node.get("Resources", {})
    if offered.get(target.resource) != 1 or offered.get("CPU", 0) or offered.get("GPU", 0):
        raise TargetError(f"--latency-target {target.name}: the node at {node.get('NodeManagerAddress')} offers "
                          f"{target.resource}: {offered.get(target.resource):g}, CPU: {offered.get('CPU', 0):g}, "
                          f"GPU: {offered.get('GPU', 0):g} (a board offers 1, 0 and 0: no training beside a "
                          f"measurement); start it with: {join}")
    facts = _on_board(target, node, "to report its facts", lightseg_board.facts_on_node)
    host = lightseg_board.facts()["lightseg_board"]
    if facts.get("lightseg_board") != host:
        raise TargetError(f"--latency-target {target.name}: the board's lightseg_board is {facts.get('lightseg_board')}, "
                          f"the host's {host}; copy this checkout's board/ folder to the board and run there: "
                          "pip install ./board")
    missing = [p for p in target.providers if p not in facts["providers"]]
    if missing:
        raise TargetError(f"--target-providers {','.join(target.providers)}: the board {target.name} "
                           f"({facts['host']}) has no {', '.join(missing)} (its onnxruntime offers "
                           f"{', '.join(facts['providers'])})")
    _on_board(target, node, f"to run a graph with --target-providers {','.join(target.providers)}",
              lightseg_board.measure_on_node, _probe_graph(), lightseg_board.Request(1, target.providers, 0.0, 2))
    return facts


def check_board(study: optuna.Study, target: LatencyTarget, facts: dict) -> None:
    """Record the board's facts in a new study; refuse a resumed study's other board (one line)."""
    then = study.user_attrs.get(StudyKey.TARGET_BOARD)
    if then is None:
        if counted_trials(study):  # their latencies are another device's: the front would mix two
            raise TargetError(f"--latency-target {target.name}: study {study.study_name!r} has trials whose latency "
                              "was measured without a board; give another --study or --force")
        study.set_user_attr(StudyKey.TARGET_BOARD, facts)
        return
    diffs = [f"{k}: {then.get(k)} then, {facts.get(k)} now" for k in IDENTITY if then.get(k) != facts.get(k)
             and k in then]  # a study from before a fact was recorded compares the others
    if diffs:
        raise TargetError(f"--resume: study {study.study_name!r} was measured on another board as "
                             f"--latency-target {target.name} ({'; '.join(diffs)}); resume on that board, or give "
                             "another --study or --force")


def refuse_dropped_target(study: optuna.Study, target: LatencyTarget | None = None) -> None:
    """A study measured on a board (its trial meaning names the target, recorded before any board was
    found), resumed without --latency-target, is refused (one line)."""
    described = (study.user_attrs.get(StudyKey.TRIAL_MEANING) or {}).get("latency target")
    if target is None and described or target is None and StudyKey.TARGET_BOARD in study.user_attrs:
        name = (described or "").split(":")[0]
        raise TargetError(f"--resume: study {study.study_name!r} measured latency on a board (--latency-target "
                             f"{name or 'NAME'}); resume with it, or give another --study or --force")


def with_target_columns(table: pd.DataFrame, study: optuna.Study) -> pd.DataFrame:
    """trials.csv with, after the latency, where it was measured and the search host's figure, in a run
    that measured on a board (other runs' tables stay as they were)."""
    attrs = {t.number: t.user_attrs for t in counted_trials(study)}
    shown = [k for k in TARGET_COLUMNS if any(k in a for a in attrs.values())]
    if not len(table) or not shown:
        return table
    table = table.copy()
    at = list(table.columns).index("latency_iqr_ms") + 1
    for i, key in enumerate(shown):
        table.insert(at + i, key, [attrs[n].get(key) for n in table["trial"]])
    return table


def describe_board(facts: dict) -> str:
    return (f"{facts['cpu']}, {facts['cores']} cores, {facts['machine']}, onnxruntime {facts['onnxruntime']} "
            f"on {facts['host']}")


def latency_source(config: dict) -> str | None:
    """Where a run's latencies come from, as its reports say it (None: the trials' own device)."""
    target = (config.get("settings") or {}).get("latency_target")
    if not target:
        return None
    board = config.get(StudyKey.TARGET_BOARD)
    return f"target {target['name']}" + (f" ({describe_board(board)})" if board else "")


def labelled(objectives: Sequence, config: dict) -> list:
    """The objectives with the latency's axis label naming the target it was measured on."""
    source = latency_source(config)
    if source is None:
        return list(objectives)
    return [replace(o, label=f"{o.label} on {source.split(' (')[0]}") if o.key == "latency_ms" else o
            for o in objectives]
