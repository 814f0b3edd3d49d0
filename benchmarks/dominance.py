"""Dominance over the hand-designed networks: for each preset trained in a run (same protocol as
every trial), the searched architectures with at least its mIoU at no more GMACs and no more
latency, and the margins of the best of them (largest mIoU gain).

    python benchmarks/dominance.py --run results/example [--run results/other ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import save  # noqa: E402


def dominance(table: pd.DataFrame) -> pd.DataFrame:
    done = table[table["state"] == "complete"]
    rows = []
    for _, preset in done[done["preset"].fillna("") != ""].iterrows():
        rivals = done[(done["preset"].fillna("") == "") & (done["miou"] >= preset["miou"])
                      & (done["gmacs"] <= preset["gmacs"]) & (done["latency_ms"] <= preset["latency_ms"])]
        row = {"preset": preset["preset"], "preset_miou": preset["miou"], "preset_gmacs": preset["gmacs"],
               "preset_latency_ms": preset["latency_ms"], "dominated_by": len(rivals)}
        if len(rivals):
            best = rivals.sort_values("miou", ascending=False).iloc[0]
            row.update({"best_trial": int(best["trial"]), "best_tag": best["tag"], "miou": best["miou"],
                        "gmacs": best["gmacs"], "latency_ms": best["latency_ms"],
                        "miou_gain": best["miou"] - preset["miou"], "gmacs_ratio": best["gmacs"] / preset["gmacs"],
                        "latency_ratio": best["latency_ms"] / preset["latency_ms"]})
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="a run folder (repeatable)")
    args = p.parse_args()
    tables = []
    for run in args.run:
        t = dominance(pd.read_csv(Path(run) / "trials.csv"))
        t.insert(0, "run", Path(run).name)
        tables.append(t)
    save(pd.concat(tables), "dominance")


if __name__ == "__main__":
    main()
