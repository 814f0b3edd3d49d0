"""Does `--precision bf16` on a CPU with native bf16 (AVX512-BF16 or AMX) give the same validated
mIoU as fp32, the CPU's `auto`?

The resolution ladder's nets (benchmarks/scale_ladder.py) at the validated protocol (32x64, 10
epochs, seeds 1000 and 1001): the ladder trains them in fp32; this adds their bf16 trainings of the
same seeds to its log, results/bench/scale_ladder.csv, and compares the pairs: the mean mIoU change
with a 95 % bootstrap interval over nets, the largest change, and Kendall's tau between the two
rankings of the nets. (Speed: benchmarks/train_step.py, which times both in one run.)

    python benchmarks/scale_ladder.py     # the fp32 trainings (its 32x64 rung comes first)
    python benchmarks/cpu_precision.py    # the bf16 ones -> results/bench/cpu_precision.csv
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, run_logged, save  # noqa: E402
from benchmarks.scale_ladder import EPOCHS, LOG, SEEDS, done_trainings, ladder_nets, train  # noqa: E402
from benchmarks.train_step import cpu_has_bf16  # noqa: E402


def main() -> None:
    warnings.simplefilter("ignore")
    if not cpu_has_bf16():
        print("this CPU has no native bf16 (it would be emulated, slower than fp32): nothing to compare")
        return
    precision = "bf16"
    done = done_trainings()
    jobs = [{"net": n.name, "group": n.group, "spec": n.spec, "height": 32, "width": 64, "seed": s,
             "precision": precision} for n in ladder_nets() for s in SEEDS
            if (n.name, "32x64", s, precision, EPOCHS) not in done]
    print(f"{len(jobs)} {precision} trainings to run  [{machine()}]", flush=True)
    run_logged(train, jobs, LOG, workers=2,
               show=lambda r: f"{r['net']} seed {r['seed']}: mIoU {r['miou']:.3f} ({r['train_seconds']} s)")
    runs = pd.read_csv(LOG)
    runs = runs[runs["rung"] == "32x64"]
    ref, fast = runs[runs["precision"] == "fp32"], runs[runs["precision"] == precision]
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
