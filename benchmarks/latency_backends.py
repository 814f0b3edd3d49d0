"""PyTorch-eager latency against ONNX Runtime latency of the exported graph, on the presets and
sampled nets: the speed-up, how the two rank the nets, and how well GMACs predicts each.

Batch 1, one thread, warm-up 10, median of `--runs`; every ONNX graph is checked against PyTorch
before it is timed. Run alone (timings).

    python benchmarks/latency_backends.py [--nets 20] [--size 32x64] [--quick]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path

import pandas as pd
from scipy.stats import kendalltau, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import sample_specs, save  # noqa: E402
from search_spaces import ArchSpec, InputSpec, build_model  # noqa: E402
from search_spaces.space import SearchSpace  # noqa: E402
from trainers.costs import count_gmacs  # noqa: E402
from trainers.deploy import measure_onnx_latency  # noqa: E402
from trainers.timing import measure_latency  # noqa: E402

PRESETS = Path(__file__).resolve().parent.parent / "search_spaces" / "presets"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", type=int, default=20)
    p.add_argument("--size", default="32x64")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="5 sampled nets, 10 runs")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    if args.quick:
        args.nets, args.runs = 5, 10
    h, w = map(int, args.size.split("x"))
    inp = InputSpec(height=h, width=w, in_channels=3, num_classes=8)
    presets = [ArchSpec.from_yaml(f).with_input(height=h, width=w, num_classes=8) for f in sorted(PRESETS.glob("*.yaml"))]
    sampled = [dataclasses.replace(s, name=f"sampled_{i}") for i, s in enumerate(sample_specs(SearchSpace(inp), args.nets, args.seed))]
    rows = []
    for spec in presets + sampled:
        model = build_model(spec).eval()
        eager = measure_latency(model, spec, runs=args.runs, threads=1)
        ort = measure_onnx_latency(model, spec, runs=args.runs, threads=1)
        rows.append({"net": spec.name, "tag": spec.tag(), "gmacs": count_gmacs(model, spec),
                     "torch_ms": eager.median_ms, "torch_iqr_ms": eager.iqr_ms,
                     "onnxruntime_ms": ort.median_ms, "onnxruntime_iqr_ms": ort.iqr_ms,
                     "speedup": eager.median_ms / ort.median_ms})
        print(f"{spec.name:12s} torch {eager.median_ms:8.2f} ms   onnxruntime {ort.median_ms:8.2f} ms", flush=True)
    table = pd.DataFrame(rows)
    save(table, "latency_backends_nets")
    summary = pd.DataFrame([{
        "nets": len(table), "size": args.size, "runs": args.runs,
        "speedup_median": table["speedup"].median(), "speedup_min": table["speedup"].min(),
        "speedup_max": table["speedup"].max(),
        "kendall_torch_vs_onnxruntime": kendalltau(table["torch_ms"], table["onnxruntime_ms"]).statistic,
        "spearman_gmacs_vs_torch": spearmanr(table["gmacs"], table["torch_ms"]).statistic,
        "spearman_gmacs_vs_onnxruntime": spearmanr(table["gmacs"], table["onnxruntime_ms"]).statistic,
    }])
    print()
    save(summary, "latency_backends")


if __name__ == "__main__":
    main()
