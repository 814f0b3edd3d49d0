"""Does training in bf16 on a CPU (the `auto` precision where the CPU has AVX512-BF16 or AMX) give
the same validated mIoU as fp32?

The ladder's nets (benchmarks/scale_ladder.py) are trained at the validated protocol (32x64, 10
epochs, seeds 1000 and 1001) in `auto` precision, and paired with their fp32 trainings of the same
seeds in results/bench/scale_ladder.csv: the mean mIoU change with a 95 % bootstrap interval over
nets, the largest change, and Kendall's tau between the two rankings of the nets.

    python benchmarks/scale_ladder.py     # the fp32 trainings (its 32x64 rung)
    python benchmarks/cpu_precision.py    # -> results/bench/cpu_precision.csv, cpu_precision_runs.csv
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, machine, run_logged, save  # noqa: E402
from benchmarks.scale_ladder import LOG, SEEDS, ladder_nets, train  # noqa: E402
from trainers.train import resolve_precision  # noqa: E402

RUNS = RESULTS / "cpu_precision_runs.csv"


def main() -> None:
    warnings.simplefilter("ignore")
    precision = resolve_precision("auto", "cpu")
    if precision == "fp32":
        print("this CPU trains fp32 under `auto` (no native bf16): nothing to compare")
        return
    nets = ladder_nets()
    done = pd.read_csv(RUNS) if RUNS.exists() else pd.DataFrame(columns=["net", "seed"])
    have = set(zip(done["net"], done["seed"]))
    jobs = [{"net": n.name, "group": n.group, "spec": n.spec, "height": 32, "width": 64, "seed": s,
             "precision": precision} for n in nets for s in SEEDS if (n.name, s) not in have]
    print(f"{len(jobs)} trainings in {precision} to run  [{machine()}]", flush=True)
    run_logged(train, jobs, RUNS, workers=2,
               show=lambda r: f"{r['net']} seed {r['seed']}: mIoU {r['miou']:.3f} ({r['train_seconds']} s)")
    fast = pd.read_csv(RUNS)
    ref = pd.read_csv(LOG)
    ref = ref[ref["rung"] == "32x64"]
    pairs = fast.merge(ref, on=["net", "seed"], suffixes=("_bf16", "_fp32"))
    per_net = pairs.groupby("net")[["miou_bf16", "miou_fp32"]].mean()
    diff = (per_net["miou_bf16"] - per_net["miou_fp32"]).to_numpy()
    rng = np.random.default_rng(0)
    boot = diff[rng.integers(0, len(diff), (4000, len(diff)))].mean(1)
    seed_sd = ref.groupby("net")["miou"].std(ddof=1).mean()
    tau = kendalltau(per_net["miou_bf16"], per_net["miou_fp32"]).statistic
    table = pd.DataFrame([{
        "precision": precision, "nets": len(per_net), "pairs": len(pairs),
        "mean_miou_change": diff.mean(), "ci_low": np.percentile(boot, 2.5), "ci_high": np.percentile(boot, 97.5),
        "largest_abs_change": np.abs(diff).max(), "fp32_seed_sd": seed_sd, "kendall_tau": tau}])
    # no speed column: the fp32 runs were timed in another run; benchmarks/train_step.py times both in one
    print(per_net.assign(change=diff).round(4).to_string())
    save(table, "cpu_precision")


if __name__ == "__main__":
    main()
