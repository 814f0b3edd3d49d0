"""`python -m nas.profile --arch X.yaml`: parameters, GMACs, latency and memory of one network."""
from __future__ import annotations

import argparse
import json

from search_spaces import ArchSpec, build_model
from trainers.costs import LATENCY_BACKENDS, measure_costs, resolve_backend

from .cli import UsageError, parse_device, parse_size, require_at_least, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nas.profile", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", required=True, help="architecture YAML (an ArchSpec)")
    p.add_argument("--size", help="HxW input size overriding the spec's, e.g. 512x1024")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--runs", type=int, default=50, help="timed runs (median reported)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads while timing")
    p.add_argument("--latency-backend", default="auto", choices=("auto", *LATENCY_BACKENDS),
                   help="ONNX Runtime on the exported graph (checked against PyTorch; auto: where it has a "
                        "provider for the device) or PyTorch eager")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = ArchSpec.from_yaml(args.arch)
    if args.size:
        h, w = parse_size(args.size)
        spec = spec.with_input(height=h, width=w)
    parse_device(args.device)
    require_at_least(args.threads, "--threads", 1)
    if args.runs < 3:
        raise UsageError(f"--runs {args.runs}: at least 3 runs are needed for a median and an IQR")
    try:
        backend = resolve_backend(args.latency_backend, args.device)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    costs = measure_costs(spec, args.device, runs=args.runs, threads=args.threads, model=build_model(spec),
                          backend=backend)
    out = {
        "params": costs.params, "params_deployed": costs.params_deployed, "gmacs": costs.gmacs,
        "latency_ms": costs.latency_ms, "latency_iqr_ms": costs.latency_iqr_ms, "peak_mem_mb": costs.peak_mem_mb,
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{spec.tag()} at {spec.input.height}x{spec.input.width}, {spec.input.num_classes} classes, {args.device}")
    print(f"  params            {costs.params:>14,d}")
    print(f"  params (deployed) {costs.params_deployed:>14,d}")
    print(f"  GMACs             {costs.gmacs:>14.4f}   (1 multiply-add = 1, batch 1)")
    print(f"  latency ms        {costs.latency_ms:>14.3f}   (median of {args.runs}, IQR {costs.latency_iqr_ms:.3f}, {args.threads} thread(s), {backend})")
    print(f"  peak memory MB    {costs.peak_mem_mb:>14.3f}   (activations of one batch-1 inference)")
    return 0


if __name__ == "__main__":
    run(main)
