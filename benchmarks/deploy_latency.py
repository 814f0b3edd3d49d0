"""Does latency at the search size rank nets as latency at the deployment size does?

Over the 4 presets and `--nets` nets sampled from the space: every cost at `--small` (the search's
default size) and at `--large` (a deployment size), CPU ONNX Runtime on the exported graph, batch 1,
one thread, as a trial measures it (`measure_costs`, warm-up 10, median of `--runs`). Reports Kendall
tau between the two sizes' latency rankings, tau of GMACs against latency at each size, and the
seconds `measure_costs` takes per trial at each size (what `--deploy-size` adds to every trial).
Run alone (timings).

    python benchmarks/deploy_latency.py [--nets 20] [--small 32x64] [--large 512x1024] [--quick]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import sample_specs, save  # noqa: E402
from search_spaces import InputSpec, load_preset  # noqa: E402
from search_spaces.presets import PRESET_NAMES  # noqa: E402
from search_spaces.space import SearchSpace  # noqa: E402
from trainers.costs import measure_costs  # noqa: E402

CLASSES = 8  # the embedded street scenes'


def _size(text: str) -> tuple[int, int]:
    h, w = map(int, text.lower().split("x"))
    return h, w


def _tau(a: pd.Series, b: pd.Series) -> float:
    return float(kendalltau(a, b).statistic)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", type=int, default=20, help="nets sampled from the space (besides the 4 presets)")
    p.add_argument("--small", default="32x64", help="the search size")
    p.add_argument("--large", default="512x1024", help="the deployment size")
    p.add_argument("--runs", type=int, default=30, help="timed runs per measurement (a trial's default)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="4 sampled nets, 5 runs, 2 warm-ups (a smoke run)")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    if args.quick:
        args.nets, args.runs, args.warmup = 4, 5, 2
    (sh, sw), (lh, lw) = _size(args.small), _size(args.large)
    presets = [load_preset(n, sh, sw, CLASSES) for n in PRESET_NAMES]
    space = SearchSpace(InputSpec(height=sh, width=sw, in_channels=3, num_classes=CLASSES))
    sampled = [dataclasses.replace(s, name=f"sampled_{i}") for i, s in enumerate(sample_specs(space, args.nets, args.seed))]
    rows = []
    for spec in presets + sampled:
        row = {"net": spec.name, "tag": spec.tag()}
        for label, (h, w) in (("small", (sh, sw)), ("large", (lh, lw))):
            start = time.perf_counter()
            c = measure_costs(spec.with_input(height=h, width=w), "cpu", runs=args.runs, warmup=args.warmup,
                              threads=1, backend="onnxruntime")
            row.update({f"seconds_{label}": time.perf_counter() - start, f"gmacs_{label}": c.gmacs,
                        f"latency_ms_{label}": c.latency_ms, f"latency_iqr_ms_{label}": c.latency_iqr_ms,
                        f"peak_mem_mb_{label}": c.peak_mem_mb, f"params_deployed_{label}": c.params_deployed})
        rows.append(row)
        print(f"{spec.name:12s} {args.small} {row['latency_ms_small']:8.3f} ms ({row['seconds_small']:.1f} s)   "
              f"{args.large} {row['latency_ms_large']:9.2f} ms ({row['seconds_large']:.1f} s)", flush=True)
    table = pd.DataFrame(rows)
    table["rank_small"] = table["latency_ms_small"].rank().astype(int)
    table["rank_large"] = table["latency_ms_large"].rank().astype(int)
    save(table, "deploy_latency_nets")
    summary = pd.DataFrame([{
        "nets": len(table), "small": args.small, "large": args.large, "runs": args.runs,
        "kendall_latency_small_vs_large": _tau(table["latency_ms_small"], table["latency_ms_large"]),
        "kendall_gmacs_vs_latency_small": _tau(table["gmacs_small"], table["latency_ms_small"]),
        "kendall_gmacs_vs_latency_large": _tau(table["gmacs_large"], table["latency_ms_large"]),
        "seconds_per_trial_small": table["seconds_small"].median(),
        "seconds_per_trial_large": table["seconds_large"].median(),
        "seconds_per_trial_large_max": table["seconds_large"].max(),
    }])
    print()
    save(summary, "deploy_latency")


if __name__ == "__main__":
    main()
