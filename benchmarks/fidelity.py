"""Measurement fidelity: how well GMACs rank networks by measured latency (and memory).

Samples `--nets` architectures from the space at the study size and measures GMACs, CPU latency
(1 thread, median) and peak memory; prints Spearman rank correlations. A low GMACs-latency
correlation is why the search measures latency instead of trusting FLOPs.

    python benchmarks/fidelity.py [--nets 50] [--size 32x64]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import sample_specs, save  # noqa: E402
from search_spaces import InputSpec  # noqa: E402
from search_spaces.space import SearchSpace  # noqa: E402
from trainers.costs import measure_costs  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", type=int, default=50)
    p.add_argument("--size", default="32x64")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    h, w = map(int, args.size.split("x"))
    space = SearchSpace(InputSpec(height=h, width=w, num_classes=8))
    rows = []
    for spec in sample_specs(space, args.nets, args.seed):
        c = measure_costs(spec, runs=50)
        rows.append({"tag": spec.tag(), "gmacs": c.gmacs, "params": c.params, "latency_ms": c.latency_ms,
                     "latency_iqr_ms": c.latency_iqr_ms, "peak_mem_mb": c.peak_mem_mb})
    table = pd.DataFrame(rows)
    save(table, "fidelity")
    corr = table[["gmacs", "params", "latency_ms", "peak_mem_mb"]].rank().corr()
    print("\nSpearman rank correlation over", len(table), "sampled nets:")
    print(corr.round(3).to_string())
    save(corr.reset_index().rename(columns={"index": "metric"}), "fidelity_spearman")


if __name__ == "__main__":
    main()
