"""`python -m nas.export --run results/<study>`: the YAML (and optionally ONNX) of any trial.

Without `--trial`, the run's best trial (best.yaml's) is exported. `--onnx FILE` writes the network
with TVConv kernels cached (the generator is not exported) and checks that ONNX Runtime gives the
same outputs as PyTorch. A search keeps no trained weights: pass `--checkpoint` (from
`python -m nas.train`) to export trained ones; otherwise the weights are freshly initialised,
which is what on-device latency measurement needs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import optuna
import torch
import yaml

from search_spaces import ArchSpec, build_model
from trainers.costs import example_input, warm_caches
from trainers.train import load_checkpoint

from .cli import UsageError, run
from .pareto import trial_spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nas.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a run folder written by nas.search (holds config.yaml)")
    p.add_argument("--trial", type=int, default=None, help="trial number (default: the run's best.yaml)")
    p.add_argument("--out", default=None, help="YAML path (default: RUN/trial_<N>.yaml, or RUN/best.yaml's copy)")
    p.add_argument("--onnx", default=None, help="also write this ONNX file, verified against PyTorch")
    p.add_argument("--checkpoint", default=None, help="weights from nas.train to put in the ONNX file")
    return p


def load_run_study(run_dir: Path) -> optuna.Study:
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UsageError(f"--run {run_dir}: no config.yaml there (not a run folder of nas.search)")
    config = yaml.safe_load(config_path.read_text())
    url = config.get("storage") or f"sqlite:///{(run_dir / 'study.db').resolve()}"
    return optuna.load_study(study_name=config["study"], storage=optuna.storages.RDBStorage(url))


def trial_by_number(study: optuna.Study, number: int) -> ArchSpec:
    trials = [t for t in study.get_trials(deepcopy=False) if t.number == number and "spec" in t.user_attrs]
    if not trials:
        raise UsageError(f"--trial {number}: no such trial with an architecture (0..{len(study.trials) - 1})")
    return trial_spec(trials[0])


def export_onnx(model: torch.nn.Module, spec: ArchSpec, path: Path, atol: float = 1e-4) -> float:
    """Write ONNX (TVConv kernels cached, batch 1) and return the max |ONNX - PyTorch| difference."""
    import onnxruntime as ort

    warm_caches(model, spec)
    x = example_input(spec)
    with torch.no_grad():
        expected = model(x).numpy()
    torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["logits"], dynamo=False,
                      opset_version=17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})[0]
    diff = float(np.abs(got - expected).max())
    if diff > atol:
        raise RuntimeError(f"ONNX output differs from PyTorch by {diff:.2e} (> {atol})")
    return diff


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run)
    if args.trial is None:
        best = run_dir / "best.yaml"
        if not best.is_file():
            raise UsageError(f"--run {run_dir}: no best.yaml (the front is empty); name a --trial")
        spec, out = ArchSpec.from_yaml(best), Path(args.out or run_dir / "best_export.yaml")
    else:
        spec = trial_by_number(load_run_study(run_dir), args.trial)
        out = Path(args.out or run_dir / f"trial_{args.trial:04d}.yaml")
    spec.to_yaml(out)
    print(f"wrote {out} ({spec.tag()})")
    if args.onnx:
        model = build_model(spec)
        if args.checkpoint:
            ckpt_spec, model = load_checkpoint(args.checkpoint)
            if ckpt_spec != spec:
                raise UsageError(f"--checkpoint {args.checkpoint}: its architecture is {ckpt_spec.tag()}, not {spec.tag()}")
        diff = export_onnx(model.eval(), spec, Path(args.onnx))
        print(f"wrote {args.onnx}; ONNX Runtime matches PyTorch (max abs difference {diff:.1e})")
    return 0


if __name__ == "__main__":
    run(main)
