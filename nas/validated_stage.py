"""The validated final stage of a run, as one flow: candidates -> trainings -> isolated latency -> summary.

`nas.search` hands the stage its study once the trials are done (or interrupted); the stage chooses
its candidates once, trains at the validation protocol what the study does not hold yet, times each
candidate's latency alone, and summarises what the study holds. `nas.runner` executes its tasks;
the pieces it orders (the choice, the jobs, one training, the validated values) are `nas.validate`'s.
"""
from __future__ import annotations

from functools import cached_property
from typing import Callable

import optuna

from search_spaces import ArchSpec, build_model
from trainers.data import SegData, load_data
from trainers.train import write_checkpoint

from . import idle_time, runner, validate as val
from .config import SearchConfig
from .pareto import trial_spec
from .records import Status, TrialKey, validated_key
from .services import ReconstructionFits, reconstruction_key


class ValidatedStage:
    """The validated stage of one run. Its candidates are chosen when first asked for and kept, so
    the trainings and the summary (written even after Ctrl-C) speak of the same nets.

    `cache` (an object with get(job) -> result | None and add(job, result)) lets many studies share
    trainings that are the same (same net, seed and data), as a benchmark comparing searches does.
    `target` (nas.target_ledger.TargetSession, with --latency-target) times the latencies on the board.
    """

    def __init__(self, cfg: SearchConfig, study: optuna.Study, cache=None, target=None):
        self.cfg, self.study, self.cache, self.target = cfg, study, cache, target
        self.idle: idle_time.IdleTimeTrainer | None = None

    def start_idle_time(self, space, data: SegData, data_ref) -> None:
        """Train the references (presets, --baseline) in CPU time the search leaves idle (`nas.idle_time`),
        where the trials use this machine's CPUs and validate on the search's data."""
        cfg, p = self.cfg, self.cfg.protocol
        if (runner.uses_workers(cfg) or (p.height, p.width) != (cfg.meaning.height, cfg.meaning.width)
                or not idle_time.supported()):
            return
        jobs = reference_jobs(self.study, space, p)
        if jobs:
            self.idle = idle_time.IdleTimeTrainer(jobs, data_ref, p, cfg.settings, publish_reconstructions(jobs, data))

    @cached_property
    def candidates(self) -> list[int]:
        return val.candidates(self.study, self.cfg.objectives, self.cfg.options.noise, self.cfg.options.val_max)

    def run(self, data: SegData, data_ref) -> None:
        """Retrain the candidates at the validation protocol (what is not yet in the study), then
        re-measure their latency with nothing else running. `data` is the search's data set, and
        `data_ref` its reference in Ray's object store (None: not put there yet)."""
        cfg, study = self.cfg, self.study
        finished, in_flight = self.idle.stop() if self.idle is not None else ([], None)
        self._keep_idle_time(finished)
        jobs = self._not_cached(val.pending_jobs(study, self.candidates, cfg.protocol))
        if in_flight is not None and any(job.key == in_flight[0].key for job in jobs):
            jobs = [job for job in jobs if job.key != in_flight[0].key]  # it keeps a core: one training fewer beside it
        elif in_flight is not None:  # no job of this stage (its trial is no candidate): dropped
            self.take_idle_time()
            in_flight = None
        if jobs or in_flight is not None:
            p, m = cfg.protocol, cfg.meaning
            if (p.height, p.width) != (m.height, m.width):
                data, data_ref = load_data(m.data, p.height, p.width, seed=m.seed), None
            if data_ref is None:
                data, data_ref = runner.share_data(cfg, data)
            print(f"validating {len(self.candidates)} nets at {p.label()}: {len(jobs) + (in_flight is not None)} "
                  "trainings to run")
            beside = [in_flight[1]] if in_flight is not None else []
            run_trainings(cfg, jobs, data_ref, p, self._recorder(len(jobs)), publish_reconstructions(jobs, data), beside)
            if self.idle is not None:
                self._keep_idle_time(self.idle.end())
                self.idle = None
            left = val.pending_jobs(study, self.candidates, cfg.protocol)  # the idle-time training failed
            if left:
                run_trainings(cfg, left, data_ref, p, self._recorder(len(left)), publish_reconstructions(left, data))
        pending = val.isolated_latency_pending(study, self.candidates, cfg.settings)
        if pending:
            measured = (self.target.isolated(pending) if self.target is not None
                        else runner.on_worker(cfg, val.measure_isolated_latency, pending, cfg.settings))
            for key, latency in measured.items():
                study.set_user_attr(key, latency)

    def summarise(self) -> val.Validation:
        """The validated front and the fidelity figures, from what the study holds now."""
        self.take_idle_time()  # after Ctrl-C: what finished is kept, the one in flight dropped
        return val.summarise(self.study, self.candidates, self.cfg.protocol, self.cfg.objectives)

    def take_idle_time(self) -> None:
        """Keep the idle-time trainings that finished and drop the one in flight (Ctrl-C, an error)."""
        if self.idle is not None:
            idle, self.idle = self.idle, None
            self._keep_idle_time(idle.end(wait=False))

    def _keep_idle_time(self, results: list[tuple[val.Job, dict]]) -> None:
        """Store the idle-time trainings of jobs the stage would run as they are."""
        if not results:
            return
        wanted = {job.key: job for job in val.pending_jobs(self.study, self.candidates, self.cfg.protocol)}
        kept = [(job, r) for job, r in results
                if job.key in wanted and wanted[job.key].spec == job.spec and r["status"] == Status.COMPLETE]
        record = self._recorder(len(kept), "trained in idle CPU time during the search")
        for job, result in kept:
            record(job, result)

    def _not_cached(self, jobs: list[val.Job]) -> list[val.Job]:
        """Store the cached results of `jobs` in the study; returns the jobs still to train."""
        if self.cache is None:
            return jobs
        known = {job.key: self.cache.get(job) for job in jobs}
        for key, result in known.items():
            if result is not None:
                self.study.set_user_attr(key, result)
        return [job for job in jobs if known[job.key] is None]

    def _recorder(self, total: int, note: str = "") -> Callable[[val.Job, dict], None]:
        """Stores each training's result in the study as it arrives, so a kill loses none that finished."""
        cfg, study, cache, done = self.cfg, self.study, self.cache, []

        def record(job: val.Job, result: dict) -> None:
            checkpoint = result.pop("checkpoint", None)  # made by a worker, kept by the driver
            if checkpoint is not None:
                write_checkpoint(val.weights_path(cfg.run_dir, job.number, job.seed), checkpoint)
            study.set_user_attr(job.key, result)
            if cache is not None and result["status"] == Status.COMPLETE:  # a failure is retried by a re-run
                cache.add(job, result)
            done.append(job)
            if not cfg.options.quiet:
                what = f"mIoU {result['miou']:.4f}" if result["status"] == Status.COMPLETE else result["reason"]
                print(f"  [{len(done)}/{total}] trial {job.number} seed {job.seed}: {what}{f' ({note})' if note else ''}",
                      flush=True)

        return record


def run_trainings(cfg: SearchConfig, jobs: list[val.Job], data_ref, protocol: val.Protocol,
                  record: Callable[[val.Job, dict], None], reconstructions: dict, beside: list = ()) -> None:
    """The validation trainings as Ray tasks with a trial's resources; `record(job, result)` as each
    arrives. `reconstructions` maps a job's key to the object-store reference of its DUpsampling W;
    `beside`, the references of trainings that hold a trial's slot outside Ray's count (runner.run_tasks)."""
    calls = [(job, data_ref, protocol, cfg.settings, reconstructions.get(job.key)) for job in jobs]
    runner.run_tasks(cfg, val.train_job, calls, lambda i, result: record(jobs[i], result), beside)


def publish_reconstructions(jobs: list[val.Job], data: SegData) -> dict[str, object]:
    """DUpsampling's W for each job that needs one, fitted here once per key and put in the object
    store: job key -> reference."""
    refs, by_key, fits = {}, {}, ReconstructionFits()
    for job in jobs:
        spec = ArchSpec.from_dict(job.spec)
        key = reconstruction_key(spec, data.info.ignore_index, job.seed)
        if key is not None:
            if key not in by_key:
                by_key[key] = runner.put(fits(spec, data, job.seed))
            refs[job.key] = by_key[key]
    return refs


def reference_jobs(study: optuna.Study, space, protocol: val.Protocol) -> list[val.Job]:
    """The references' validation trainings the study does not hold yet, smallest net first: the
    trials a preset or the --baseline net is (or is queued to be) run as, with the spec the search
    gives them (`nas.tune_adapters.StudySearcher.suggest`)."""
    jobs = []
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get(TrialKey.PRESET)
        if not name or t.user_attrs.get(TrialKey.INTERRUPTED) or t.state == optuna.trial.TrialState.FAIL:
            continue  # a failed or interrupted trial is no candidate (a requeued copy of it may be)
        if TrialKey.SPEC in t.user_attrs:
            spec = trial_spec(t)
        elif "fixed_params" in t.system_attrs:  # queued, not asked yet: what Optuna's enqueue_trial stores
            fixed = t.system_attrs["fixed_params"]  # the active parameters: the rest, sampled, decode to nothing
            spec = ArchSpec.from_dict({**space.decode(space.active_values(fixed)).to_dict(), "name": name})
        else:
            continue
        spec = spec.with_input(height=protocol.height, width=protocol.width)
        size = sum(p.numel() for p in build_model(spec).parameters())
        jobs += [(size, val.Job(t.number, seed, spec.to_dict(), 0.0)) for seed in protocol.seeds
                 if validated_key(t.number, seed) not in study.user_attrs]
    return [job for _, job in sorted(jobs, key=lambda sj: (sj[0], sj[1].number, sj[1].seed))]
