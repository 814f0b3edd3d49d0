"""Search throughput: trials per hour with 1 vs 2 concurrent trials, and the share of wall time
spent outside train/eval/measure (Ray, Optuna, bookkeeping, result files).

    python benchmarks/bench_search.py [--budget 16] [--epochs 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import save  # noqa: E402
from nas.search import build_parser, config_from_args, search  # noqa: E402


def _trial_phase_seconds(run_dir: Path) -> float:
    """From the first trial's start to the last trial's end, read off the study's timestamps."""
    import optuna
    study = optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir / 'study.db'}")
    starts = [t.datetime_start for t in study.trials if t.datetime_start]
    ends = [t.datetime_complete for t in study.trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=int, default=30)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--concurrency", default="1,2")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    for conc in map(int, args.concurrency.split(",")):
        with tempfile.TemporaryDirectory() as out:
            cfg = config_from_args(build_parser().parse_args(
                ["--budget", str(args.budget), "--epochs", str(args.epochs), "--out", out, "--study", f"c{conc}",
                 "--max-concurrent", str(conc), "--no-early-stopping"]))
            cfg = dataclasses.replace(cfg, quiet=True)
            start = time.perf_counter()
            search(cfg)
            wall = time.perf_counter() - start
            phase = _trial_phase_seconds(Path(out) / f"c{conc}")
            table = pd.read_csv(Path(out) / f"c{conc}" / "trials.csv")
        busy = table["trial_seconds"].sum()
        rows.append({"concurrent": conc, "trials": len(table), "wall_s": wall, "trials_per_hour": 3600 * len(table) / wall,
                     "trial_seconds_sum": busy, "outside_share": 1 - busy / (wall * conc),
                     "trial_phase_s": phase, "outside_share_trials": 1 - busy / (phase * conc)})
    save(pd.DataFrame(rows), "search_throughput")


if __name__ == "__main__":
    main()
