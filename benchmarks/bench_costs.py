"""Every preset's params, GMACs, latency (CPU, and CUDA when present) and memory, to CSV.

Also repeats one net's CPU latency measurement `--repeats` times to show its coefficient of
variation (the spread a search sees between identical measurements).

    python benchmarks/bench_costs.py [--size 512x1024] [--classes 19] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import save  # noqa: E402
from search_spaces import build_model, load_preset  # noqa: E402
from search_spaces.presets import PRESET_NAMES  # noqa: E402
from trainers.costs import count_deployed_params, count_gmacs, count_params, measure_peak_memory_mb  # noqa: E402
from trainers.timing import measure_latency  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="512x1024")
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5, help="repeated latency measurements of one net (CV)")
    p.add_argument("--cv-runs", type=int, default=100, help="timed runs per repeated measurement")
    p.add_argument("--cv-size", default="64x128", help="input size of the CV measurement")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    h, w = map(int, args.size.split("x"))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for name in PRESET_NAMES:
        spec = load_preset(name, h, w, args.classes)
        model = build_model(spec).eval()
        row = {"preset": name, "size": args.size, "classes": args.classes, "params": count_params(model),
               "params_deployed": count_deployed_params(model), "gmacs": count_gmacs(model, spec)}
        for dev in devices:
            runs = args.runs if dev == "cuda" else max(5, args.runs // 5)  # full-size CPU runs are slow
            lat = measure_latency(model, spec, dev, warmup=3 if dev == "cpu" else 10, runs=runs, threads=1)
            row[f"latency_ms_{dev}"] = lat.median_ms
            row[f"latency_iqr_ms_{dev}"] = lat.iqr_ms
            row[f"peak_mem_mb_{dev}"] = measure_peak_memory_mb(model, spec, dev)
            model.cpu()
        rows.append(row)
    save(pd.DataFrame(rows), "costs")

    ch, cw = map(int, args.cv_size.split("x"))
    spec = load_preset("lednet", ch, cw, 8)
    model = build_model(spec)
    stats = [measure_latency(model, spec, "cpu", runs=args.cv_runs, threads=1) for _ in range(args.repeats)]
    medians, mins = [s.median_ms for s in stats], [s.min_ms for s in stats]

    def cv(v: list[float]) -> float:
        return statistics.stdev(v) / statistics.mean(v)

    print()
    save(pd.DataFrame({"repeat": range(1, args.repeats + 1), "median_ms": medians, "iqr_ms": [s.iqr_ms for s in stats],
                       "min_ms": mins, "cv_median": cv(medians), "cv_min": cv(mins)}), "latency_repeatability")
    print(f"LEDNet at {args.cv_size}, {args.repeats} measurements of {args.cv_runs} runs in a row: "
          f"CV of the median {cv(medians):.2%}, CV of the minimum {cv(mins):.2%}")


if __name__ == "__main__":
    main()
