"""Search quality: what each strategy finds per unit of compute, on the embedded data.

Strategies, each with the same budget (trials, presets included) and seeds:
  nsga2_es  NSGA-II + ASHA early stopping on mIoU (the first default)
  nsga2     NSGA-II, every trial trained to the end
  tpe       multivariate TPE + early stopping (the default since this benchmark)
  random    random sampling + early stopping

Every hypervolume uses ONE fixed reference for all runs: losses 1 - mIoU and cost / scale with the
scales of the first run (twice the largest preset cost at the study size), reference point 1.
Final hypervolume is compared at equal budget, and again at equal wall-clock (each run's curve read
at the shortest run's total time).

    python benchmarks/search_quality.py --quick        # 1 seed, budget 12, 2 epochs (minutes)
    python benchmarks/search_quality.py                # 3 seeds, budget 40, 3 epochs (under an hour on 2 cores)
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

import optuna
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, machine, save  # noqa: E402
from nas.pareto import counted_trials, hypervolume_history  # noqa: E402
from nas.search import build_parser, config_from_args, search  # noqa: E402

STRATEGIES = {
    "nsga2_es": ["--sampler", "nsga2"],
    "nsga2": ["--sampler", "nsga2", "--no-early-stopping"],
    "tpe": ["--sampler", "tpe"],
    "random": ["--sampler", "random"],
}


def run_one(out: Path, name: str, seed: int, budget: int, epochs: int) -> tuple[optuna.Study, float, dict]:
    study_name = f"{name}-s{seed}"
    args = ["--budget", str(budget), "--epochs", str(epochs), "--seed", str(seed), "--out", str(out),
            "--study", study_name, "--force", *STRATEGIES[name]]
    cfg = dataclasses.replace(config_from_args(build_parser().parse_args(args)), quiet=True)
    start = time.time()
    search(cfg)
    storage = f"sqlite:///{out / study_name / 'study.db'}"
    study = optuna.load_study(study_name=study_name, storage=storage)
    return study, start, study.user_attrs["hypervolume_scales"]


def hv_curve(study: optuna.Study, start: float, scales: dict, objectives) -> pd.DataFrame:
    """Hypervolume after each finished trial, against wall-clock seconds since the search began."""
    trials = sorted(counted_trials(study), key=lambda t: t.datetime_complete)
    return pd.DataFrame({"seconds": [t.datetime_complete.timestamp() - start for t in trials],
                         "hypervolume": hypervolume_history(trials, objectives, scales)})


def plot(curves: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4))
    for (name, seed), c in curves.groupby(["strategy", "seed"]):
        color = {"nsga2_es": "tab:red", "nsga2": "tab:orange", "tpe": "tab:blue", "random": "tab:gray"}[name]
        ax.step(c["seconds"], c["hypervolume"], where="post", color=color, alpha=0.8,
                label=name if seed == curves[curves.strategy == name].seed.min() else None)
    ax.set_xlabel("wall-clock seconds")
    ax.set_ylabel("hypervolume (normalised, fixed reference)")
    ax.set_title("Hypervolume against wall-clock time, by strategy and seed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, budget 12, 2 epochs")
    p.add_argument("--budget", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    args = p.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = args.budget or (12 if args.quick else 40)
    epochs = args.epochs or (2 if args.quick else 3)
    seeds = range(args.seeds or (1 if args.quick else 3))
    out = RESULTS / "search_quality_runs"
    from nas.pareto import parse_objectives
    objectives = parse_objectives("miou,gmacs,latency,memory")
    curves, reference = [], None
    for seed in seeds:
        for name in args.strategies.split(","):
            study, start, scales = run_one(out, name, seed, budget, epochs)
            reference = reference or scales  # one fixed reference for every run
            c = hv_curve(study, start, reference, objectives)
            c["strategy"], c["seed"] = name, seed
            curves.append(c)
            print(f"{name} seed {seed}: final HV {c['hypervolume'].iloc[-1]:.4f} in {c['seconds'].iloc[-1]:.0f} s", flush=True)
    curves = pd.concat(curves)
    equal_time = curves.groupby(["strategy", "seed"])["seconds"].max().min()
    rows = []
    for (name, seed), c in curves.groupby(["strategy", "seed"]):
        rows.append({"strategy": name, "seed": seed, "final_hv": c["hypervolume"].iloc[-1],
                     "hv_at_equal_time": c[c["seconds"] <= equal_time]["hypervolume"].max(),
                     "wall_s": c["seconds"].iloc[-1], "trials": len(c)})
    table = pd.DataFrame(rows)
    save(curves, "search_quality_curves")
    save(table, "search_quality")
    summary = table.groupby("strategy").agg(final_hv=("final_hv", "mean"), final_hv_sd=("final_hv", "std"),
                                            hv_at_equal_time=("hv_at_equal_time", "mean"), wall_s=("wall_s", "mean"))
    summary = summary.sort_values("final_hv", ascending=False).reset_index()
    save(summary, "search_quality_summary")
    plot(curves, RESULTS / "search_quality.png")
    print(f"\nequal wall-clock cut-off: {equal_time:.0f} s; budget {budget}, {epochs} epochs, {len(seeds)} seed(s); {machine()}")


if __name__ == "__main__":
    main()
