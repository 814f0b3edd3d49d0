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

from search_spaces import ArchSpec
from trainers.data import SegData, load_data
from trainers.train import write_checkpoint

from . import runner, validate as val
from .config import SearchConfig
from .records import Status
from .services import fit_for, reconstruction_key


class ValidatedStage:
    """The validated stage of one run. Its candidates are chosen when first asked for and kept, so
    the trainings and the summary (written even after Ctrl-C) speak of the same nets.

    `cache` (an object with get(job) -> result | None and add(job, result)) lets many studies share
    trainings that are the same (same net, seed and data), as a benchmark comparing searches does.
    `target` (nas.target_ledger.TargetSession, with --latency-target) times the latencies on the board.
    """

    def __init__(self, cfg: SearchConfig, study: optuna.Study, cache=None, target=None):
        self.cfg, self.study, self.cache, self.target = cfg, study, cache, target

    @cached_property
    def candidates(self) -> list[int]:
        return val.candidates(self.study, self.cfg.objectives, self.cfg.options.noise, self.cfg.options.val_max)

    def run(self, data: SegData, data_ref) -> None:
        """Retrain the candidates at the validation protocol (what is not yet in the study), then
        re-measure their latency with nothing else running. `data` is the search's data set, and
        `data_ref` its reference in Ray's object store (None: not put there yet)."""
        cfg, study = self.cfg, self.study
        jobs = self._not_cached(val.pending_jobs(study, self.candidates, cfg.protocol))
        if jobs:
            p, m = cfg.protocol, cfg.meaning
            if (p.height, p.width) != (m.height, m.width):
                data, data_ref = load_data(m.data, p.height, p.width, seed=m.seed), None
            if data_ref is None:
                data, data_ref = runner.share_data(cfg, data)
            print(f"validating {len(self.candidates)} nets at {p.label()}: {len(jobs)} trainings to run")
            run_trainings(cfg, jobs, data_ref, p, self._recorder(len(jobs)), publish_reconstructions(jobs, data))
        pending = val.isolated_latency_pending(study, self.candidates, cfg.settings)
        if pending:
            measured = (self.target.isolated(pending) if self.target is not None
                        else runner.on_worker(cfg, val.measure_isolated_latency, pending, cfg.settings))
            for key, latency in measured.items():
                study.set_user_attr(key, latency)

    def summarise(self) -> val.Validation:
        """The validated front and the fidelity figures, from what the study holds now."""
        return val.summarise(self.study, self.candidates, self.cfg.protocol, self.cfg.objectives)

    def _not_cached(self, jobs: list[val.Job]) -> list[val.Job]:
        """Store the cached results of `jobs` in the study; returns the jobs still to train."""
        if self.cache is None:
            return jobs
        known = {job.key: self.cache.get(job) for job in jobs}
        for key, result in known.items():
            if result is not None:
                self.study.set_user_attr(key, result)
        return [job for job in jobs if known[job.key] is None]

    def _recorder(self, total: int) -> Callable[[val.Job, dict], None]:
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
                print(f"  [{len(done)}/{total}] trial {job.number} seed {job.seed}: {what}", flush=True)

        return record


def run_trainings(cfg: SearchConfig, jobs: list[val.Job], data_ref, protocol: val.Protocol,
                  record: Callable[[val.Job, dict], None], reconstructions: dict) -> None:
    """The validation trainings as Ray tasks with a trial's resources; `record(job, result)` as each
    arrives. `reconstructions` maps a job's key to the object-store reference of its DUpsampling W."""
    calls = [(job, data_ref, protocol, cfg.settings, reconstructions.get(job.key)) for job in jobs]
    runner.run_tasks(cfg, val.train_job, calls, lambda i, result: record(jobs[i], result))


def publish_reconstructions(jobs: list[val.Job], data: SegData) -> dict[str, object]:
    """DUpsampling's W for each job that needs one, fitted here once per key and put in the object
    store: job key -> reference."""
    refs, by_key = {}, {}
    for job in jobs:
        spec = ArchSpec.from_dict(job.spec)
        key = reconstruction_key(spec, data.info.ignore_index, job.seed)
        if key is not None:
            if key not in by_key:
                by_key[key] = runner.put(fit_for(spec, data, job.seed))
            refs[job.key] = by_key[key]
    return refs
