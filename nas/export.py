"""`python -m nas.export --run results/<study>`: the YAML (and optionally ONNX) of any trial.

Without `--trial`, the run's best trial (best.yaml's) is exported. `--onnx FILE` writes the network
with TVConv kernels cached (the generator is not exported) and checks that ONNX Runtime gives the
same outputs as PyTorch. A validated trial (every member of the validated front is one) carries the
weights its validation training left in the run folder (the seed with the best validated mIoU unless `--seed` names one), at the validation
protocol's input size; `--check-miou` runs the validation split through ONNX Runtime and compares
with the recorded mIoU. Other trials get freshly initialised weights (what on-device latency
measurement needs) unless `--checkpoint` (from `python -m nas.train`) gives trained ones.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import optuna
import torch
import yaml

from search_spaces import ArchSpec, SpecError, build_model
from trainers.data import load_data
from trainers.deploy import export_onnx, onnx_miou, session
from trainers.train import load_checkpoint

from .cli import UsageError, check_out_file, run
from .pareto import trial_spec
from .records import Status, TrialKey, is_validated_key_of, storage_url
from .validate import weights_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nas.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder written by nas.search (holds config.yaml)")
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the run's best.yaml)")
    p.add_argument("--out", default=None, help="YAML path (default: RUN/trial_<N>.yaml, or RUN/best.yaml's copy)")
    p.add_argument("--onnx", default=None, help="also write this ONNX file, verified against PyTorch")
    p.add_argument("--seed", type=int, default=None, help="which validation seed's trained weights to export")
    p.add_argument("--checkpoint", default=None, help="weights from nas.train to put in the ONNX file instead")
    p.add_argument("--check-miou", action="store_true",
                   help="run the validation split through ONNX Runtime and compare with the recorded mIoU")
    return p


def load_run_config(run_dir: Path) -> dict:
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UsageError(f"--run {run_dir}: no config.yaml there (not a run folder of nas.search)")
    return yaml.safe_load(config_path.read_text())


def load_run_study(run_dir: Path) -> optuna.Study:
    config = load_run_config(run_dir)
    url = storage_url(run_dir, config.get("storage"))
    from .storage import RunFolderError, open_storage

    try:
        storage = open_storage(url)
    except RunFolderError as exc:
        raise UsageError(str(exc)) from None
    return optuna.load_study(study_name=config["study"], storage=storage)


def trial_by_number(study: optuna.Study, number: int) -> ArchSpec:
    trials = [t for t in study.get_trials(deepcopy=False) if t.number == number and TrialKey.SPEC in t.user_attrs]
    if not trials:
        raise UsageError(f"--trial {number}: no such trial with an architecture (0..{len(study.trials) - 1})")
    return trial_spec(trials[0])


def trial_of_spec(study: optuna.Study, run_dir: Path, spec: ArchSpec) -> int | None:
    """The finished trial with exactly this architecture (best.yaml names none); a sampler may have
    proposed the same net twice, so the one whose trained weights were kept comes first."""
    same = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if TrialKey.SPEC in t.user_attrs and trial_spec(t) == spec]
    trained = [n for n in same if trained_seeds(study, run_dir, n)]
    return (trained or same or [None])[0]


def trained_seeds(study: optuna.Study, run_dir: Path, number: int) -> dict[int, float]:
    """Validation seed -> recorded mIoU, for the seeds whose trained weights are in the run folder."""
    out = {}
    for key, record in study.user_attrs.items():
        if is_validated_key_of(key, number) and record.get("status") == Status.COMPLETE:
            seed = int(key.rsplit(":", 1)[1])
            if weights_path(run_dir, number, seed).is_file():
                out[seed] = float(record["miou"])
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, given in (("--check-miou", args.check_miou), ("--seed", args.seed is not None),
                        ("--checkpoint", args.checkpoint)):
        if given and not args.onnx:
            raise UsageError(f"{flag}: only means something with --onnx FILE (the exported network)")
    if args.seed is not None and args.checkpoint:
        raise UsageError("--seed and --checkpoint: give one (a validation seed's weights, or a nas.train checkpoint)")
    run_dir = Path(args.run)
    config = load_run_config(run_dir)
    study = load_run_study(run_dir) if (args.trial is not None or args.onnx) else None
    if args.trial is None:
        best = run_dir / "best.yaml"
        if not best.is_file():
            raise UsageError(f"--run {run_dir}: no best.yaml (the front is empty); name a --trial")
        spec, out = ArchSpec.from_yaml(best), Path(args.out or run_dir / "best_export.yaml")
        number = trial_of_spec(study, run_dir, spec) if study is not None else None
    else:
        spec, number = trial_by_number(study, args.trial), args.trial
        out = Path(args.out or run_dir / f"trial_{args.trial:04d}.yaml")
    # Everything that can refuse the command does so before the first file is written.
    check_out_file(out, "--out")
    if not args.onnx:
        write_yaml(spec, out)
        return 0
    onnx = check_out_file(args.onnx, "--onnx")
    if onnx.resolve() == out.resolve():
        raise UsageError(f"--onnx {onnx}: the same file as the YAML ({out}); give another name")
    seeds = trained_seeds(study, run_dir, number) if number is not None and not args.checkpoint else {}
    if args.seed is not None and args.seed not in seeds:
        raise UsageError(f"--seed {args.seed}: no trained weights of trial {number} for it "
                         f"(kept for seeds: {', '.join(map(str, sorted(seeds))) or 'none'})")
    recorded, net = None, spec  # the YAML keeps the trial's spec; the ONNX file its weights' input size
    if args.checkpoint:
        net, model = read_checkpoint(args.checkpoint)
        if net.with_input(height=spec.input.height, width=spec.input.width) != spec:
            raise UsageError(f"--checkpoint {args.checkpoint}: its architecture is {net.tag()}, not {spec.tag()}")
    elif seeds:
        seed = args.seed if args.seed is not None else max(seeds, key=seeds.get)
        net, model = load_checkpoint(weights_path(run_dir, number, seed))
        recorded = seeds[seed]
    else:
        model = build_model(spec)
    write_yaml(spec, out)
    if recorded is not None:
        print(f"trained weights of trial {number}, validation seed {seed} (validated mIoU {recorded:.4f}; "
              f"seeds kept: {', '.join(f'{s}: {m:.4f}' for s, m in sorted(seeds.items()))}), "
              f"input {net.input.height}x{net.input.width}")
    elif not args.checkpoint:
        print("no trained weights for this trial (not validated): freshly initialised weights")
    try:
        diff = export_onnx(model.eval(), net, onnx)
    except OSError as exc:
        raise UsageError(f"--onnx {onnx}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {onnx}; ONNX Runtime matches PyTorch (max difference {diff:.1e} of the largest logit)")
    if args.check_miou:
        data = load_data(config.get("data"), net.input.height, net.input.width, seed=config["seed"])
        got = onnx_miou(session(str(onnx)), data.val, data.info.num_classes, data.info.ignore_index).miou
        against = f"recorded {recorded:.4f}, difference {got - recorded:+.1e}" if recorded is not None else "no recorded value"
        print(f"validation mIoU through ONNX Runtime: {got:.4f} ({against})")
    return 0


def write_yaml(spec: ArchSpec, out: Path) -> None:
    try:
        spec.to_yaml(out)
    except OSError as exc:  # checked writable first; a full disk or a special file system remains
        raise UsageError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {out} ({spec.tag()})")


def read_checkpoint(path: str) -> tuple[ArchSpec, torch.nn.Module]:
    """A checkpoint of `python -m nas.train`, or one line saying why the file is not one."""
    if not Path(path).is_file():
        raise UsageError(f"--checkpoint {path}: no such file (a checkpoint.pt written by python -m nas.train)")
    try:
        return load_checkpoint(path)
    except SpecError:
        raise
    except Exception:  # torch.load and load_state_dict raise many types, none telling, for foreign files
        raise UsageError(f"--checkpoint {path}: not a checkpoint written by python -m nas.train") from None


if __name__ == "__main__":
    run(main)
