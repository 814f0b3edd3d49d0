"""The execution: Ray Tune runs the study's trials in parallel and stops hopeless ones early.

The Optuna study (`nas.study`) holds the truth; this module only executes. Ray Tune asks the study
for each trial through a Searcher (ask), runs it in a worker with its resources, stops the ones
multi-objective successive halving ranks low (`nas.promotion`), and the outcome is told back
(`record_outcome`). Other work that needs a trial's resources (the validated stage's trainings,
timings) runs here as plain Ray tasks. The data set is put in Ray's object store once and mapped
by every trial.
"""
from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import optuna

from search_spaces import ArchSpec
from search_spaces.space import SearchSpace
from trainers.costs import BACKENDS, default_backend
from trainers.data import SegData
from trainers.gpu_share import is_fatal_cuda_error

from .config import SearchConfig
from .records import Status
from .services import DriverServices, worker_attempt, worker_reconstruction
from .study import Heartbeat
from .target_ledger import TargetClient
from .trial import TrialSettings, evaluate_trial


class WorkerUnusable(RuntimeError):
    """A sticky CUDA error: raised out of the trainable so that Ray Tune ends this worker (an
    errored trial's actor is never reused) and runs the trial again in a fresh one."""


def _trainable(config: dict, data: SegData) -> None:
    import ray
    from ray import tune

    settings = TrialSettings.from_dict(config["settings"])
    spec = ArchSpec.from_dict(config["spec"])
    attempt = config.get("prior_attempts", 0) + worker_attempt(config["ledger"], config["number"])
    retry_of = config.get("retry_of", -1)
    node = ray.get_runtime_context().get_node_id()  # where it ran, for the record (and the cluster tests)
    result = evaluate_trial(spec, data, settings, config["number"], attempt=attempt,
                            report=lambda r: tune.report({**r, "node": node}),
                            reconstruction=worker_reconstruction(config["ledger"], config["reconstruction"]),
                            retry_of=None if retry_of < 0 else retry_of, reference=bool(config.get("preset")),
                            board=TargetClient.named(config.get("target_ledger"), settings))
    if result.get("fatal"):
        raise WorkerUnusable(result["reason"])
    if result["status"] != Status.COMPLETE:
        tune.report({"miou": 0.0, **result, "node": node})


def _shared_trainable(data_ref):
    """The trainable, holding only a reference to the data set in Ray's object store: every trial
    on a node maps that one copy (NumPy buffers are read zero-copy) instead of receiving its own."""

    def trainable(config: dict) -> None:
        import ray

        _trainable(config, ray.get(data_ref))

    return trainable


def share_data(cfg: SearchConfig, data: SegData) -> tuple[SegData, object]:
    """Move the data set into Ray's object store; returns the driver's zero-copy view and its ref.

    The caller drops its own copy for the view, so a node holds the data set once, not once for
    the driver and once for the trials.
    """
    import ray

    start_ray(cfg, data_bytes=data.train.nbytes + data.val.nbytes)
    ref = ray.put(data)
    return ray.get(ref), ref


def start_ray(cfg: SearchConfig, data_bytes: int = 0) -> None:
    """Start (or join, with --address) Ray once per process; refuse GPU shares it cannot give."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Optuna holds every result: Ray's per-trial JSON/CSV/TensorBoard loggers are only overhead.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # A trial needs no working folder of its own: nothing it makes is written to disk.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # The search's own handler stops Ray Tune on Ctrl-C (nas.interrupt): Tune's would end the trials
    # loop and let the search go on to the validated stage as if the budget were done.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    res = cfg.resources
    if not ray.is_initialized():
        kw = {"address": res.address} if res.address else {"num_cpus": os.cpu_count(), "num_gpus": gpu_count()}
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if not res.address and data_bytes * 1.2 > 0.3 * total:  # Ray's default store is 30 % of memory
            kw["object_store_memory"] = int(min(data_bytes * 1.2 + 2**28, 0.8 * total))
        if res.address:
            check_address(res.address)
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 _temp_dir=None if res.address else str(_ray_temp_dir()), **kw)
        if sigterm is not None:  # ray.init makes SIGTERM exit at once, past the search's clean stop
            signal.signal(signal.SIGTERM, sigterm)
    gpus = ray.cluster_resources().get("GPU", 0)
    if res.gpus_per_trial > gpus:  # Ray would wait for ever for a GPU no node has
        raise ClusterError(f"--gpus-per-trial {res.gpus_per_trial}: Ray sees {gpus:g} GPU(s) here")


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a HOST:PORT nothing answers at: Ray would retry it for minutes (and suggest other
    clusters it finds) before giving up."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto", a ray:// client address: Ray's own resolution and messages
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError:
        raise ClusterError(f"--address {address}: no Ray cluster answers there; start one with `ray start --head` "
                           "on that machine, or give the address it prints") from None


def run_trials(cfg: SearchConfig, study: optuna.Study, space: SearchSpace, data: SegData, data_ref, n: int,
               scales: dict[str, float], callbacks: list, stop: threading.Event | None = None,
               target_ledger: str | None = None) -> int:
    """Run `n` more trials through Ray Tune on the data set `share_data` put in the object store
    (`data` is the driver's view of it, on which the driver fits DUpsampling's W for the trials).
    Setting `stop` ends the run early: the trials in flight are stopped and queued again.
    `target_ledger` names the --latency-target ledger the trials measure latency through.
    Returns how many were interrupted (by a lost node or `stop`) and queued again (the caller runs them)."""
    from ray import tune

    start_ray(cfg)
    res = cfg.resources
    concurrent = res.max_concurrent or trial_slots(cfg)  # ask the study for no more trials than can run at once
    from .tune_adapters import FullTraining, MultiObjectiveASHA, StopOnRequest, StudySearcher

    services = DriverServices()
    scheduler = (MultiObjectiveASHA(cfg.objectives, scales, cfg.settings.epochs)
                 if cfg.meaning.early_stopping and cfg.settings.epochs > 1 else FullTraining())
    stopper = StopOnRequest(stop)
    searcher = StudySearcher(study, space, cfg.objectives, cfg.owner,
                             lambda spec: services.reconstruction(spec, data, cfg.settings.seed), scheduler, stopper)
    trainable = tune.with_resources(_shared_trainable(data_ref), {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        param_space={"settings": cfg.settings.to_dict(), "ledger": services.name, "target_ledger": target_ledger},
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=n, max_concurrent_trials=concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=f"tune-{int(time.time())}", storage_path=str((cfg.run_dir / "tune").resolve()),
                                  verbose=0, callbacks=[*callbacks, searcher.callback, stopper], stop=stopper,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    )
    try:
        with Heartbeat(study, searcher.trials):
            tuner.fit()
        searcher.flush()
        interrupted = searcher.requeue_in_flight()
    finally:
        services.close()
    return searcher.lost + interrupted


def put(value) -> object:
    """`value` in Ray's object store, for tasks to map rather than each receive a copy; returns its reference."""
    import ray

    return ray.put(value)


def run_tasks(cfg: SearchConfig, fn: Callable[..., dict], calls: list[tuple], record: Callable[[int, dict], None],
              beside: list = ()) -> None:
    """`fn(*args)` for each of `calls` as Ray tasks with one trial's resources (Ray resolves object
    references among the args); `record(i, result)` as each arrives, so a kill loses only the tasks
    in flight. A worker that dies is retried once; dying twice is a failed result. `beside`: references
    of work holding a trial's slot that Ray does not count (nas.idle_time): while one is pending, one
    task fewer runs."""
    import ray

    task = _trial_task(cfg, _task)
    waiting, in_flight, beside = list(enumerate(calls)), {}, list(beside)
    slots = trial_slots(cfg) if beside else 0
    while waiting or in_flight:
        room = len(waiting) if not beside else max(1, slots - len(beside)) - len(in_flight)
        for i, args in waiting[:max(room, 0)]:
            in_flight[task.remote(fn, *args)] = i
        waiting = waiting[max(room, 0):]
        done, _ = ray.wait(list(in_flight) + beside, num_returns=1)
        if done[0] in beside:
            beside.remove(done[0])
            continue
        i = in_flight.pop(done[0])
        try:
            result = ray.get(done[0])
        except ray.exceptions.RayError as exc:  # the worker died twice
            result = {"status": Status.FAILED, "reason": f"worker process died: {type(exc).__name__}"}
        record(i, result)


def trial_slots(cfg: SearchConfig) -> int:
    """How many trials the cluster holds at once, by their CPU and GPU shares."""
    import ray

    res, cluster = cfg.resources, ray.cluster_resources()
    # 1 // 0.2 is 4.0 in floating point: a small epsilon counts the fifth share
    fits = math.floor(cluster.get("CPU", 1) / max(res.cpus_per_trial, 1e-9) + 1e-9)
    if res.gpus_per_trial > 0:
        fits = min(fits, math.floor(cluster.get("GPU", 0) / res.gpus_per_trial + 1e-9))
    return max(1, int(fits))


def _task(fn: Callable[..., dict], *args) -> dict:
    """In a worker: `fn(*args)`'s result, with the node it ran on."""
    import ray

    try:
        result = {**fn(*args), "node": ray.get_runtime_context().get_node_id()}
    except Exception as exc:  # outside fn's own handling (its clean-up, say): still a sticky error?
        if is_fatal_cuda_error(exc):
            os._exit(70)
        raise
    if result.get("fatal"):  # a sticky CUDA error: this worker must not take another task; Ray retries this one
        os._exit(70)
    return result


def gpu_count() -> int:
    import torch
    return torch.cuda.device_count()


def gpus_to_schedule_by() -> float:
    """The GPUs Ray counts for trial shares here: those of the Ray this process runs already (which
    may declare fake ones), else this machine's."""
    ray = sys.modules.get("ray")  # not imported: not running (and not worth importing to ask)
    if ray is not None and ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0)
    return gpu_count()


class ClusterError(RuntimeError):
    """The Ray cluster cannot run the trials as configured; one line saying what it lacks."""


def uses_workers(cfg: SearchConfig) -> bool:
    """Whether what needs the trials' device runs in Ray tasks rather than in the driver."""
    return bool(cfg.resources.address) or cfg.settings.device.startswith("cuda")


def on_worker(cfg: SearchConfig, fn: Callable, *args):
    """`fn(*args)` where the trials run: in a Ray task with one trial's resources when the trials
    use a GPU or another machine (the driver never touches a device it was not given), else here."""
    if not uses_workers(cfg):
        return fn(*args)
    import ray

    return ray.get(_trial_task(cfg, fn).remote(*args))


def _trial_task(cfg: SearchConfig, fn: Callable):
    """`fn` as a Ray task with one trial's resources; a worker that dies is retried once."""
    import ray

    start_ray(cfg)
    return ray.remote(num_cpus=cfg.resources.cpus_per_trial, num_gpus=cfg.resources.gpus_per_trial, max_retries=1)(fn)


def _worker_facts() -> dict:
    import onnxruntime as ort
    import torch

    return {"cuda": torch.cuda.is_available(), "providers": ort.get_available_providers()}


def settle_on_workers(cfg: SearchConfig) -> SearchConfig:
    """On a cluster (`--address`), ask a worker what the driver cannot know: whether it has CUDA,
    and which latency backend `auto` means there. With ONNX Runtime on CUDA, open one session
    there too: a provider that is listed but does not load is refused now, not in every trial."""
    settled = _settle_backend(cfg) if cfg.resources.address else cfg
    if settled.settings.device.startswith("cuda") and settled.settings.latency_backend == "onnxruntime":
        from trainers.deploy import probe_provider
        try:
            on_worker(settled, probe_provider, settled.settings.device)
        except RuntimeError as exc:
            raise ClusterError(str(getattr(exc, "cause", None) or exc).splitlines()[0]) from None
    return settled


def _settle_backend(cfg: SearchConfig) -> SearchConfig:
    facts = on_worker(cfg, _worker_facts)
    s = cfg.settings
    cuda = s.device.startswith("cuda")
    if cuda and not facts["cuda"]:
        raise ClusterError(f"--device cuda: the workers holding a GPU share at {cfg.resources.address} have no usable CUDA "
                           "device (use --device cpu to schedule by GPU shares alone)")
    backend = s.latency_backend
    if backend == "auto":
        backend = default_backend(s.device, facts["providers"])
    elif not BACKENDS[backend].serves(s.device, facts["providers"]):
        raise ClusterError(f"--latency-backend {backend}: the workers' onnxruntime has no CUDA provider "
                           "(install onnxruntime-gpu there, or use --latency-backend torch)")
    return cfg.replace(settings=dataclasses.replace(s, latency_backend=backend))


def _ray_temp_dir() -> Path:
    # Short and private: Ray's socket paths must stay under the OS limit of ~107 characters.
    path = Path(os.environ.get("LIGHTSEG_RAY_TMP") or f"/tmp/lightseg-ray-{os.getuid()}")
    path.mkdir(parents=True, exist_ok=True)
    return path
