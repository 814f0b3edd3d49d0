"""Wall time of one trial (measure + train + eval) over sampled specs at the search's defaults.

Shows that `--budget 100` is affordable on a laptop CPU and that short training still separates
good nets from bad ones (the mIoU range).

    python benchmarks/bench_trial.py [--specs 20] [--epochs 3] [--size 32x64]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import sample_specs, save  # noqa: E402
from nas.study import study_space  # noqa: E402
from nas.trial import TrialSettings, evaluate_trial  # noqa: E402
from trainers.data import load_data  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--specs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--size", default="32x64")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    h, w = map(int, args.size.split("x"))
    data = load_data(None, h, w)
    space = study_space(data, h, w)
    rows = []
    for i, spec in enumerate(sample_specs(space, args.specs, args.seed)):
        r = evaluate_trial(spec, data, TrialSettings(epochs=args.epochs, threads=1), number=i)
        rows.append({"spec": spec.tag(), "status": r["status"], "trial_seconds": r["trial_seconds"],
                     "train_eval_seconds": r.get("train_seconds"), "miou": r.get("miou"), "gmacs": r.get("gmacs")})
        print(f"{i + 1:2d}/{args.specs} {r['trial_seconds']:6.1f} s  mIoU {r.get('miou', float('nan')):.3f}  {spec.tag()}", flush=True)
    table = pd.DataFrame(rows)
    save(table, "trial_time")
    t = table["trial_seconds"]
    print(f"\none trial on 1 CPU thread: median {t.median():.1f} s, p10 {t.quantile(0.1):.1f} s, p90 {t.quantile(0.9):.1f} s, max {t.max():.1f} s")
    print(f"mIoU across {len(table)} specs after {args.epochs} epochs: {table['miou'].min():.3f} .. {table['miou'].max():.3f}")


if __name__ == "__main__":
    main()
