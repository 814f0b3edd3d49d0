"""Does a verdict made at 32x64 hold at the sizes users deploy at? The resolution ladder.

The nets: the default run's validated stage (results/example: the 4 presets, the front and the nets
within noise of it) plus 8 variants of one front net that each move one seed axis (decomposition
ratio, DUpsampling vs bilinear, TVConv depth, dilation). Each is trained with the validated
protocol's recipe (10 epochs, batch 16, the same two seeds) on the embedded street scenes rendered
at each rung (the same scenes drawn at that size, not rescaled pixels), and costed at every rung up to
512x1024.

Training length: equal optimiser steps at every rung (256 images, 10 epochs, 160 steps). Every
epoch's validation mIoU is kept (`miou_by_epoch`), so the report checks that the last epochs have
flattened at each size instead of assuming it. Precision: what `auto` trains in on this CPU (bf16
where it has AVX512-BF16 or AMX), as a search here does; each row names it, and
benchmarks/cpu_precision.py adds the fp32 trainings of the 32x64 rung to compare the two.

    python benchmarks/scale_ladder.py                 # the trainings (resumable; hours on 2 cores)
    python benchmarks/scale_ladder.py --costs         # GMACs, params, memory, ORT latency per rung (run alone)
    python benchmarks/scale_ladder.py --epochs 8 --rungs 32x64   # a shorter recipe at one rung, beside the 10-epoch one
    python benchmarks/scale_ladder_report.py          # tau, verdicts, axis effects -> results/bench/

Each finished training is appended to results/bench/scale_ladder.csv at once, so a killed run
resumes where it stopped (`training_jobs` says in which order the trainings run).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, machine, run_logged  # noqa: E402
from search_spaces import ArchSpec  # noqa: E402
from trainers.train import resolve_precision  # noqa: E402

EXAMPLE = RESULTS.parent / "example"
TRAIN_RUNGS = ((32, 64), (64, 128), (128, 256))
COST_RUNGS = TRAIN_RUNGS + ((256, 512), (512, 1024))
REFERENCE = (128, 256)  # the rung every other is judged against
EPOCHS = 10
SEEDS = (1000, 1001)  # the default run's validation seeds: the 32x64 rung re-makes its figures
AXIS_BASE = 70  # the example's trial whose one-axis variants isolate each seed technique
LOG = RESULTS / "scale_ladder.csv"
COSTS = RESULTS / "scale_ladder_costs.csv"
NETS = RESULTS / "scale_ladder_nets.csv"  # the nets with their specs, chosen from results/example at commit d3b3e7e


@dataclass(frozen=True)
class LadderNet:
    name: str
    group: str  # preset, front, near (within noise of the front) or axis
    spec: dict  # at 32x64; each rung rebuilds it at its own size
    axis: str = ""  # for the axis variants: which technique moved, and to what


def spec_from_row(row: pd.Series) -> dict:
    """An ArchSpec dict from a trials.csv row (its flattened `stages[i].field` columns)."""
    stage_keys = ("width", "depth", "core", "kernel", "dilations", "dropout", "growth")
    stages = []
    for i in range(3):
        s = {k: row[f"stages[{i}].{k}"] for k in stage_keys}
        s["dilations"] = [int(d) for d in str(s["dilations"]).split("-")]
        stages.append({k: (v if k in ("core", "dilations") else float(v) if k == "dropout" else int(v))
                       for k, v in s.items()})
    spec = {"input": {k: int(row[f"input.{k}"]) for k in ("height", "width", "in_channels", "num_classes")},
            "stages": stages,
            "decoder": {"kind": row["decoder.kind"], "width": int(row["decoder.width"]),
                        "blocks": int(row["decoder.blocks"])},
            "ratio": int(row["ratio"]), "downsampler": row["downsampler"], "tvconv_from": int(row["tvconv_from"])}
    return ArchSpec.from_dict(spec).to_dict()  # checked, and in the spec's own key order


def axis_variants(base: dict) -> list[LadderNet]:
    """One change each to the base net, named for the technique it moves."""
    def moved(name: str, axis: str, **change) -> LadderNet:
        spec = {**base, **{k: v for k, v in change.items() if k != "last_dilations"}}
        if "last_dilations" in change:
            spec["stages"] = [*base["stages"][:2], {**base["stages"][2], "dilations": change["last_dilations"]}]
        if "decoder" in change:
            spec["decoder"] = {**base["decoder"], **change["decoder"]}
        return LadderNet(name, "axis", ArchSpec.from_dict(spec).to_dict(), axis)

    return [moved("axis_r1", "ratio 1", ratio=1),
            moved("axis_r4", "ratio 4", ratio=4),
            moved("axis_bilinear", "bilinear decoder", decoder={"kind": "bilinear"}),
            moved("axis_r4_bilinear", "ratio 4, bilinear decoder", ratio=4, decoder={"kind": "bilinear"}),
            moved("axis_tv3", "TVConv from stage 3", tvconv_from=3),
            moved("axis_tv1", "TVConv in every stage", tvconv_from=1),
            moved("axis_dil1", "last stage undilated", last_dilations=[1]),
            moved("axis_dil16", "last stage dilations 2-4-8-16", last_dilations=[2, 4, 8, 16])]


def ladder_nets() -> list[LadderNet]:
    """The ladder's nets as first chosen (kept in NETS, so a regenerated example run changes none)."""
    if not NETS.exists():
        chosen = example_nets()
        pd.DataFrame([{"net": n.name, "group": n.group, "axis": n.axis, "spec": json.dumps(n.spec)} for n in chosen]
                     ).to_csv(NETS, index=False)
    table = pd.read_csv(NETS, keep_default_na=False)
    return [LadderNet(r.net, r.group, json.loads(r.spec), r.axis) for r in table.itertuples()]


def example_nets() -> list[LadderNet]:
    """The example run's validated nets, then the axis variants of its trial `AXIS_BASE`."""
    trials = pd.read_csv(EXAMPLE / "trials.csv")
    front = set(pd.read_csv(EXAMPLE / "pareto.csv")["trial"])
    nets = []
    for _, row in trials[trials["miou_validated"].notna()].iterrows():
        preset = row["preset"] if isinstance(row["preset"], str) else ""
        group = "preset" if preset else "front" if row["trial"] in front else "near"
        nets.append(LadderNet(preset or f"trial_{int(row['trial']):04d}", group, spec_from_row(row)))
    base = next(n for n in nets if n.name == f"trial_{AXIS_BASE:04d}")
    return nets + axis_variants(base.spec)


def at_size(net: LadderNet, height: int, width: int) -> ArchSpec:
    return ArchSpec.from_dict(net.spec).with_input(height=height, width=width)


def train(job: dict) -> dict:
    """One training in a worker process, one thread, the validated protocol's recipe."""
    from nas.trial import TrialSettings
    from trainers.data import load_data
    from trainers.train import fit

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    h, w = job["height"], job["width"]
    data = load_data(None, h, w, seed=0)
    spec = ArchSpec.from_dict(job["spec"]).with_input(height=h, width=w)
    epochs = job.get("epochs", EPOCHS)
    result = fit(spec, data, TrialSettings(precision=job["precision"]).train_config(epochs, job["seed"]))
    return {"net": job["net"], "group": job["group"], "rung": f"{h}x{w}", "height": h, "width": w,
            "seed": job["seed"], "epochs": epochs, "precision": result.precision, "miou": result.miou,
            "miou_by_epoch": "/".join(f"{r.miou:.4f}" for r in result.history),
            "train_seconds": round(result.train_seconds, 1), "eval_seconds": round(result.eval_seconds, 1)}


def training_jobs(nets: list[LadderNet], done: set[tuple[str, str, int, str, int]], precision: str,
                  epochs: int = EPOCHS, rungs=TRAIN_RUNGS) -> list[dict]:
    """The (net, rung, seed) trainings not in the log, in the order that gives answers soonest: the
    32x64 rung, then every net at the reference rung with one seed, then its second seed, then the
    rungs between; most GMACs first within each (the two workers finish together)."""
    from trainers.costs import count_gmacs
    from search_spaces import build_model

    macs = {n.name: count_gmacs(build_model(at_size(n, 32, 64)), at_size(n, 32, 64)) for n in nets}
    between = [r for r in TRAIN_RUNGS[1:] if r != REFERENCE]
    order = [(TRAIN_RUNGS[0], SEEDS)] + [(REFERENCE, (s,)) for s in SEEDS] + [(r, SEEDS) for r in between]
    order = [(r, seeds) for r, seeds in order if r in rungs]
    jobs = []
    for (h, w), seeds in order:
        for net in sorted(nets, key=lambda n: -macs[n.name]):
            jobs += [{"net": net.name, "group": net.group, "spec": net.spec, "height": h, "width": w, "seed": s,
                      "precision": precision, "epochs": epochs}
                     for s in seeds if (net.name, f"{h}x{w}", s, precision, epochs) not in done]
    return jobs


def done_trainings() -> set[tuple[str, str, int, str, int]]:
    """(net, rung, seed, precision, epochs) of every training in the log."""
    cols = ["net", "rung", "seed", "precision", "epochs"]
    done = pd.read_csv(LOG) if LOG.exists() else pd.DataFrame(columns=cols)
    return set(zip(*(done[c] for c in cols)))


def measure_rung_costs(nets: list[LadderNet]) -> pd.DataFrame:
    """GMACs, parameters, peak inference memory and ONNX Runtime latency (1 thread) at every rung."""
    from trainers.costs import measure_costs

    rows = []
    for h, w in COST_RUNGS:
        runs = 30 if h * w <= 128 * 256 else 10  # a 512x1024 run of a big net takes about a second
        for net in nets:
            c = measure_costs(at_size(net, h, w), runs=runs, warmup=3, threads=1, backend="onnxruntime")
            rows.append({"net": net.name, "group": net.group, "axis": net.axis, "rung": f"{h}x{w}",
                         "height": h, "width": w, "gmacs": c.gmacs, "params": c.params,
                         "peak_mem_mb": c.peak_mem_mb, "latency_ms": c.latency_ms, "latency_iqr_ms": c.latency_iqr_ms})
            print(f"{h}x{w} {net.name}: {c.gmacs:.3f} GMACs, {c.latency_ms:.2f} ms", flush=True)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--costs", action="store_true", help="measure the costs at every rung (no training)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=EPOCHS, help="the recipe's epochs (the ladder's own: 10)")
    p.add_argument("--rungs", default=",".join(f"{h}x{w}" for h, w in TRAIN_RUNGS), help="comma list of rungs to train")
    p.add_argument("--list", action="store_true", help="print the nets and stop")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    nets = ladder_nets()
    if args.list:
        for n in nets:
            print(f"{n.name:12s} {n.group:6s} {ArchSpec.from_dict(n.spec).tag()} {n.axis}")
        return
    if args.costs:
        table = measure_rung_costs(nets)
        table.to_csv(COSTS, index=False)
        print(f"wrote {COSTS}  ({machine()})")
        return
    precision = resolve_precision("auto", "cpu")
    known = {f"{h}x{w}": (h, w) for h, w in TRAIN_RUNGS}
    unknown = [r for r in args.rungs.split(",") if r not in known]
    if unknown:
        p.error(f"--rungs {','.join(unknown)}: not a rung of the ladder; one of {', '.join(known)}")
    rungs = [r for r in TRAIN_RUNGS if f"{r[0]}x{r[1]}" in args.rungs.split(",")]
    jobs = training_jobs(nets, done_trainings(), precision, args.epochs, rungs)
    print(f"{len(nets)} nets x {len(rungs)} rungs x {len(SEEDS)} seeds, {args.epochs} epochs, {precision}: "
          f"{len(jobs)} trainings to run  [{machine()}]", flush=True)
    run_logged(train, jobs, LOG, args.workers,
               show=lambda r: f"{r['rung']} {r['net']} seed {r['seed']}: mIoU {r['miou']:.3f} ({r['train_seconds']} s)")


if __name__ == "__main__":
    main()
