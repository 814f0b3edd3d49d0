"""`python -m nas.search --budget 100`: search the space for the Pareto front of mIoU against costs."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import optuna
import pandas as pd

from trainers.costs import LATENCY_BACKENDS, resolve_backend
from trainers.data import load_data
from trainers.train import PRECISIONS

from . import runner, study as st
from .cli import UsageError, parse_net_size, run
from .baseline import load_baseline, within_baseline
from .config import Resources, RunOptions, SearchConfig, TrialMeaning
from .interrupt import EXIT_INTERRUPTED, StopRequest, resume_command
from .progress import Progress
from .protocols import DEFAULT as DEFAULT_PROTOCOL, PROTOCOLS, protocol_label
from .pareto import parse_objectives
from .records import StudyKey
from .report import validation_summary, write_results, written_outputs
from .run_folder import publish_run_folder
from .target import TargetError, add_target_flags, refuse_dropped_target, target_from_args
from .target_ledger import open_board
from .trial import Constraints, TrialSettings
from .validated_stage import ValidatedStage


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nas.search", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--budget", type=int, default=RunOptions.budget, help="trials to run, presets included")
    a("--data", default=None, help="dataset folder (folder or Cityscapes layout); default: the embedded street scenes")
    a("--study", default=RunOptions.study, help="study name; outputs go to OUT/STUDY")
    a("--out", default=RunOptions.out, help="results folder")
    a("--objectives", default="miou,gmacs,latency,memory", help="comma list from miou,gmacs,latency,memory,params")
    # TPE stays the default: in two full runs of benchmarks/search_quality.py (validated fronts, 5
    # paired seeds each) no strategy beat random search beyond seed noise, and TPE's paired difference
    # to random averaged +0.002 over the 10 seeds, with a faster driver than GP's and no population to
    # size (README, "Search quality: the validated front per strategy").
    a("--sampler", default=RunOptions.sampler, choices=st.SAMPLERS,
      help="search strategy: Optuna's samplers, local (local search around the front), screen (a costed pool screened by -fisher) or predict (a costed pool, an ensemble predictor)")
    a("--seed", type=int, default=TrialMeaning.seed, help="fixes sampling, data order and initialisation")
    a("--protocol", default=DEFAULT_PROTOCOL, choices=PROTOCOLS,
      help="sizes and epochs of the search and the validated stage together: " + "; ".join(
          p.label() for p in PROTOCOLS.values()) + " (docs/benchmarks.md, 'The resolution ladder')")
    a("--epochs", type=int, default=None, help="maximum training epochs per trial (default: the protocol's)")
    a("--size", default=None, help="input HxW of every network, a multiple of 32 (default: the protocol's)")
    a("--deploy-size", default=None, help="input HxW the costs (and constraints) are measured at (default: --size)")
    a("--cpus-per-trial", type=float, default=Resources.cpus_per_trial, help="CPUs (and torch threads) per trial")
    a("--gpus-per-trial", type=float, default=Resources.gpus_per_trial, help="GPUs per trial; fractional shares one GPU")
    a("--device", default="auto", choices=("auto", "cuda", "cpu"),
      help="where trials compute (auto: cuda when --gpus-per-trial > 0); cpu with GPU shares only schedules by them")
    a("--precision", default=TrialSettings.precision, choices=PRECISIONS,
      help="training autocast (auto: bf16 where the GPU supports it, else fp16 with loss scaling; fp32 on CPU)")
    a("--max-concurrent", type=int, default=None, help="concurrent trials (default: CPUs / cpus-per-trial)")
    a("--address", default=None, help="address of an existing Ray cluster to run on")
    a("--storage", default=None, help="SQLAlchemy URL of the study database (default: SQLite in the run folder)")
    a("--artifacts-uri", default=None,
      help="also copy the run folder (results, validated weights) to this shared path or bucket (s3://, gs://, ...)")
    # auto = ONNX Runtime: on 24 nets its latency ranked nothing like PyTorch eager's (Kendall tau 0.03)
    # and followed GMACs far better (README, "Deployment latency"); eager times Python dispatch.
    a("--latency-backend", default="auto", choices=("auto", *LATENCY_BACKENDS),
      help="latency of the exported graph in ONNX Runtime (auto: where it has a provider for the device) or PyTorch eager")
    a("--max-latency-ms", type=float, default=None, help="constraint: trials slower than this are infeasible")
    a("--max-gmacs", type=float, default=None, help="constraint on GMACs")
    a("--max-params", type=float, default=None, help="constraint on parameters")
    a("--max-mem-mb", type=float, default=None, help="constraint on peak activation memory (MB)")
    a("--no-early-stopping", action="store_true", help="train every trial for all epochs")
    a("--resume", action="store_true", help="continue the study in an existing run folder")
    a("--force", action="store_true", help="replace an existing run folder")
    a("--pick", default=RunOptions.pick, choices=("knee", "miou", "gmacs", "latency", "memory"),
      help="which front member is best.yaml (chosen on validated values once validated)")
    a("--no-presets", action="store_true", help="do not enqueue the hand-designed presets first")
    a("--baseline", default=None, metavar="PATH.yaml",
      help="your own net (an ArchSpec YAML of the space, e.g. from nas.export): queued first, trained, validated and "
           "compared in presets.csv like a preset, never on the front")
    a("--within-baseline", action="store_true",
      help="with --baseline: its costs at the deployment size (those among the objectives: gmacs, latency, memory, "
           "params; latency with its timing spread) become constraints; where a --max-* flag is also given, the "
           "tighter limit wins")
    add_target_flags(p)
    v = p.add_argument_group("validated final stage", "the front candidates and the presets retrained at a "
                             "reference protocol with several seeds; the final front comes from these values")
    v.add_argument("--val-size", default=None, help="input HxW of the validation protocol (default: the protocol's)")
    v.add_argument("--val-epochs", type=int, default=None, help="epochs of the validation protocol (default: the protocol's)")
    v.add_argument("--val-seeds", type=int, default=TrialMeaning.val_seeds, help="seeds averaged per validated net (at least 2)")
    v.add_argument("--noise", type=float, default=RunOptions.noise,
                   help="search-protocol seed noise in mIoU: trials this close to the front are validated too")
    v.add_argument("--val-max", type=int, default=RunOptions.val_max,
                   help="most searched nets validated (the front first, spread over it by crowding distance)")
    v.add_argument("--no-validate", action="store_true", help="skip the validated stage (front from the search protocol)")
    return p


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """The configuration the flags give (each part checks its values), settled on this machine's GPUs and
    latency backends unless the trials run on a cluster (whose workers are asked at start: nas.runner)."""
    try:
        objectives = parse_objectives(args.objectives)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    named = PROTOCOLS[args.protocol]
    h, w = parse_net_size(args.size, "--size") if args.size else named.size
    vh, vw = parse_net_size(args.val_size, "--val-size") if args.val_size else named.val_size
    epochs = named.epochs if args.epochs is None else args.epochs
    val_epochs = named.val_epochs if args.val_epochs is None else args.val_epochs
    deploy = parse_net_size(args.deploy_size, "--deploy-size") if args.deploy_size else (h, w)
    device = args.device if args.device != "auto" else ("cuda" if args.gpus_per_trial > 0 else "cpu")
    settings = TrialSettings(
        epochs=epochs, seed=args.seed, threads=max(1, int(args.cpus_per_trial)), device=device,
        latency_backend=args.latency_backend, precision=args.precision,
        gpu_share=args.gpus_per_trial if device == "cuda" and args.gpus_per_trial < 1 else 0.0,
        deploy_size=None if deploy == (h, w) else deploy,
        constraints=Constraints(args.max_latency_ms, args.max_gmacs, args.max_params, args.max_mem_mb),
        latency_target=target_from_args(args),
    )
    if args.within_baseline and not args.baseline:
        raise UsageError("--within-baseline: needs --baseline PATH.yaml (the net whose costs become the constraints)")
    baseline = load_baseline(args.baseline, args.within_baseline, settings.constraints, h, w) if args.baseline else None
    cfg = SearchConfig(
        meaning=TrialMeaning(
            objectives=objectives, settings=settings, data=args.data, height=h, width=w, seed=args.seed,
            early_stopping=not args.no_early_stopping, validate=not args.no_validate, val_height=vh, val_width=vw,
            val_epochs=val_epochs, val_seeds=args.val_seeds, baseline=baseline),
        resources=Resources(
            cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
            address=args.address, storage=args.storage, artifacts_uri=args.artifacts_uri),
        options=RunOptions(
            study=args.study, out=args.out, budget=args.budget, sampler=args.sampler, presets=not args.no_presets,
            pick=args.pick, resume=args.resume, force=args.force, noise=args.noise, val_max=args.val_max,
            protocol=protocol_label(args.protocol, (h, w), epochs, (vh, vw), val_epochs)),
    )
    if args.address:  # the trials run on a cluster, whose workers are asked at start (nas.runner)
        return cfg
    if args.gpus_per_trial > 0:  # refused now, not once the run folder is written
        # --device cpu with GPU shares schedules by the shares alone: Ray must count GPUs (a test's may be fake)
        available = runner.gpu_count() if device == "cuda" else runner.gpus_to_schedule_by()
        if args.gpus_per_trial > available or available == 0:
            why = "" if device == "cuda" else " for Ray to schedule --device cpu trials by GPU shares"
            raise UsageError(f"--gpus-per-trial {args.gpus_per_trial}: this machine has {available:g} GPU(s){why}")
    try:
        backend = resolve_backend(args.latency_backend, device, " for the GPU trials")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return cfg.replace(settings=dataclasses.replace(settings, latency_backend=backend))


def search(cfg: SearchConfig, argv: list[str] | None = None) -> int:
    """Run (or resume) a search and write every output; returns the process exit code. Ctrl-C or
    SIGTERM raises KeyboardInterrupt once what finished is written and the line that resumes the
    search (from `argv`, the command's flags) is printed, so that a caller looping over searches stops too."""
    hint = f"interrupted — continue with --resume: {resume_command(argv)}"
    with StopRequest(hint) as stop:
        try:
            _search(cfg, stop)
            if stop.requested:  # stopped cleanly while trials ran
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            print(hint, file=sys.stderr)
            raise
    return 0


def _search(cfg: SearchConfig, stop: StopRequest) -> None:
    m = cfg.meaning
    data = load_data(m.data, m.height, m.width, seed=m.seed)  # validated before any trial starts
    space = st.study_space(data, m.height, m.width)
    cfg = within_baseline(runner.settle_on_workers(cfg), space)  # costs measured where the trials measure theirs
    with st.locked_run_dir(cfg) as run_dir:
        study = st.open_study(cfg, space, data)
        fresh = len(study.trials) == 0
        if not fresh and not cfg.options.resume:
            raise st.RunFolderError(f"study {cfg.study!r} already exists in {cfg.storage_url}; add --resume or --force")
        if fresh and cfg.options.resume:
            where = cfg.run_dir if cfg.resources.storage is None else "--storage"
            print(f"--resume: no study {cfg.study!r} in {where} to resume; starting it")
        st.check_resumable(study, cfg, data)
        refuse_dropped_target(study, cfg.settings.latency_target)  # a study measured on a board needs it
        st.name_metrics(study, cfg.objectives)
        requeued = (st.recover_stale_trials(study, cfg.owner, private=cfg.resources.storage is None)
                    + st.requeue_deferred(study, cfg.budget_owner))
        if requeued:
            print(f"resuming: {requeued} interrupted trial(s) queued again")
        st.enqueue_baseline(study, space, cfg.meaning.baseline)
        if cfg.options.presets:
            st.enqueue_presets(study, space)
        remaining = st.remaining_budget(study, cfg.budget, cfg.budget_owner)
        if remaining or runner.uses_workers(cfg) or cfg.settings.latency_target:  # Ray refuses resources it
            runner.start_ray(cfg, data_bytes=data.train.nbytes + data.val.nbytes)  # lacks before any result is written
        board = open_board(cfg.settings, study)  # None without --latency-target
        stage = ValidatedStage(cfg, study, target=board) if cfg.meaning.validate else None
        data_ref = None
        try:
            scales = _scales(cfg, study, space, board)  # the presets timed on the board: Ctrl-C closes it too
        except BaseException:
            if board is not None:
                board.close()
            raise
        config = {**cfg.to_dict(), **({StudyKey.TARGET_BOARD: board.facts} if board is not None else {})}
        progress = Progress(cfg, study, scales)
        print(f"study {cfg.study}: {len(st.own_trials(study, cfg.budget_owner))} trials done, {remaining} to run "
              f"(costs at {cfg.deploy_label}) -> {run_dir}")
        validation = None
        try:
            if stage is not None and remaining:  # from here on the references train in idle CPU time
                data, data_ref = runner.share_data(cfg, data)  # the driver's own copy is freed here
                stage.start_idle_time(space, data, data_ref)
            with stop.gracefully():  # Ctrl-C stops the trials in flight and queues them again
                while remaining and not stop.requested:
                    if data_ref is None:
                        data, data_ref = runner.share_data(cfg, data)  # the driver's own copy is freed here
                    from .tune_adapters import ProgressCallback  # imports Ray

                    lost = runner.run_trials(cfg, study, space, data, data_ref, remaining, scales,
                                             [ProgressCallback(progress)], stop.event, board and board.client.ledger)
                    # trials deferred for running out of memory run once more, beside other neighbours, and
                    # those a lost node or Ctrl-C interrupted run again
                    again = st.requeue_deferred(study, cfg.budget_owner)
                    remaining = st.remaining_budget(study, cfg.budget, cfg.budget_owner)
                    if not (again or lost):
                        break
            progress.running = 0  # Ray Tune's last callback can count a trial that has just ended
            print()
            print(progress.line())
            if stage is not None and not stop.requested:  # a Ctrl-C here ends it: each training is kept as it ends
                stage.run(data, data_ref)
        finally:
            # results are regenerated from the study even after Ctrl-C, so they never go stale
            try:
                if board is not None:  # the board's last measurements into the study first
                    board.close()
            finally:
                if stage is not None:
                    validation = stage.summarise()
                front = write_results(run_dir, study, cfg.objectives, scales, config, cfg.options.pick, validation)
        if validation is not None:
            print("\n".join(validation_summary(validation)))
        print(f"protocol: {cfg.options.protocol}; {config['protocol_agreement']}")
        _print_front(front)
        if (run_dir / "presets.csv").exists():
            print("\npresets against the validated nets (best at <= their GMACs and isolated latency; "
                  "one that breaks your constraints: against the best feasible net):")
            print(pd.read_csv(run_dir / "presets.csv").to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        print(f"wrote {run_dir}/: {' '.join(written_outputs(run_dir))}")
        if cfg.resources.artifacts_uri:
            print(f"copied the run folder to {publish_run_folder(run_dir, cfg.resources.artifacts_uri)}")


def _scales(cfg: SearchConfig, study: optuna.Study, space, board=None) -> dict[str, float]:
    """The fixed hypervolume reference, measured once per study and kept in the study itself; with a
    --latency-target `board`, the latency's is the presets' on the board."""
    key = StudyKey.HYPERVOLUME_SCALES
    if key not in study.user_attrs:
        scales = runner.on_worker(cfg, st.reference_scales, space, cfg.objectives, cfg.settings)
        if board is not None and "latency_ms" in scales:
            scales["latency_ms"] = board.latency_scale(space, cfg.settings)
        study.set_user_attr(key, scales)
    return study.user_attrs[key]


def _print_front(front) -> None:
    if not len(front):
        print("front: empty (no trial finished training)")
        return
    cols = [c for c in ("trial", "preset", "miou", "miou_std", "miou_search", "gmacs", "latency_ms", "peak_mem_mb",
                        "params", "tag") if c in front]
    print(front[cols].sort_values("miou", ascending=False).to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def main(argv: list[str] | None = None) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    argv = sys.argv[1:] if argv is None else argv
    cfg = config_from_args(build_parser().parse_args(argv))
    try:
        return search(cfg, argv)
    except (st.RunFolderError, runner.ClusterError, TargetError) as exc:
        raise UsageError(str(exc)) from None
    except KeyboardInterrupt:  # search() has written what finished and said how to resume
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    run(main)
