"""Search quality: the validated front each strategy finds for the same budget, seed by seed.

Every strategy is a `--sampler` of `nas.search`, run with the product's defaults (32x64, 3 epochs,
multi-objective early stopping, presets first) for the same trial budget and the same seeds. Each
run's front candidates (the presets and up to --val-max searched nets, chosen as the validated stage
chooses them) are then retrained at the validation protocol (32x64, 10 epochs, 2 seeds), and the
*validated* front's hypervolume is the figure compared. The validation seeds are the same for
every run, and a (net, seed) training is done once and reused by every run that validates that
net (training is deterministic), so runs differ only by what their search found.

Hypervolume: losses 1 - mIoU and cost / scale, where every scale is twice the largest preset cost
at 32x64 (measured by the first run, then fixed for all), reference point 1 in every objective;
latency is the search's in-trial measurement. Wall-clock: the search's trial phase (first trial
started to last finished, the sampler's time included; start-up that every strategy pays alike is
not), plus the validation trainings' own seconds divided by the 2 concurrent trainings the
validated stage runs. Validation data: one generated data set for every run (seed 0).

Headroom (--headroom N): N random architectures trained 1 epoch (the first rung), their front
validated the same way: how much front a random pool of that size holds.

    python benchmarks/search_quality.py --quick     # 2 strategies, 1 seed, budget 10 (minutes)
    python benchmarks/search_quality.py --headroom 300   # 5 strategies x 5 seeds, budget 20, and the pool
                                                         # (47 min + 15 min on 2 cores)
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, machine, paired_ratio, save  # noqa: E402
from nas import validate as val  # noqa: E402
from nas.records import STUDY_DB, Status, StudyKey, TrialKey, storage_url, validated_key  # noqa: E402
from nas.pareto import (counted_trials, hypervolume, hypervolume_history, log_losses, losses, parse_objectives,  # noqa: E402
                        trials_table)
from nas.search import build_parser, config_from_args, search  # noqa: E402
from nas.strategy import active_key  # noqa: E402
from nas.validated_stage import ValidatedStage  # noqa: E402
from trainers.data import load_data  # noqa: E402

STRATEGIES = ("random", "tpe", "nsga2", "gp", "local", "screen")
OBJECTIVES = parse_objectives("miou,gmacs,latency,memory")
VAL_DATA_SEED = 0  # every run's nets are validated on the same generated data set, so trainings are shared
CACHE = RESULTS / "search_quality_validation.jsonl"


class ValidationCache:
    """(architecture, seed) -> validation result, on disk so a re-run of the benchmark reuses it."""

    def __init__(self, path: Path, protocol: val.Protocol):
        self.path, self.protocol, self.results = path, protocol, {}
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                self.results[(row["arch"], row["seed"])] = row["result"]

    def key(self, job: val.Job) -> tuple[str, int]:
        """The trained thing: the architecture (at the protocol's size), the epochs, data and seed."""
        arch = {**{k: v for k, v in job.spec.items() if k != "name"}, "epochs": self.protocol.epochs,
                "data_seed": VAL_DATA_SEED}
        return json.dumps(arch, sort_keys=True), job.seed

    def get(self, job: val.Job) -> dict | None:
        return self.results.get(self.key(job))

    def add(self, job: val.Job, result: dict) -> None:
        arch, seed = self.key(job)
        result = {k: v for k, v in result.items() if k != "traceback"}
        self.results[(arch, seed)] = result
        with self.path.open("a") as f:
            f.write(json.dumps({"arch": arch, "seed": seed, "result": result}) + "\n")


def validated_hypervolume(cfg, study: optuna.Study, cache: ValidationCache,
                          scales: dict) -> tuple[tuple[float, float], float, list[int], dict]:
    """Validate the run's candidates as the search's final stage does (on the one validation data
    set, reusing cached trainings); returns (HV on linear and on log costs, validation seconds / 2,
    the validated trials, each preset's verdict: dominated beyond the noise margin or not)."""
    stage = ValidatedStage(cfg, study, cache)
    stage.run(load_data(None, cfg.protocol.height, cfg.protocol.width, seed=VAL_DATA_SEED), None)
    numbers = stage.candidates
    seconds = sum(study.user_attrs.get(validated_key(n, s), {}).get("seconds", 0.0)
                  for n in numbers for s in cfg.protocol.seeds)
    hv = (front_hypervolume(study, numbers, cfg.protocol, scales),
          front_hypervolume(study, numbers, cfg.protocol, scales, log_losses))
    validation = stage.summarise()
    table = trials_table(study).merge(validation.table, on="trial", how="left")
    verdicts = {f"{r.preset}": f"{r.verdict} ({r.gain:+.3f})" for r in val.preset_dominance(table, validation.margin).itertuples()}
    return hv, seconds / 2, numbers, verdicts


def front_hypervolume(study: optuna.Study, numbers: list[int], protocol: val.Protocol, scales: dict,
                      scaled=losses) -> float:
    """HV of these trials' validated values (costs: the in-trial measurements, as every search made
    them), on linear costs or (`scaled` log_losses) on log-scaled ones."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows = []
    for _, row in val.validated_values(study, numbers, protocol).iterrows():
        if row["validated_seeds"] == len(protocol.seeds):
            n = int(row["trial"])
            values = [row["miou_validated"] if o.key == "miou" else trials[n].user_attrs[o.key] for o in OBJECTIVES]
            rows.append(scaled(values, OBJECTIVES, scales))
    return hypervolume(rows)


def validated_spread(study: optuna.Study, numbers: list[int]) -> float:
    """Mean number of parameters (of the network built) in which two of these validated searched
    nets differ: how far apart the nets that reach validation are."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    keys = [dict(active_key(trials[n].params)) for n in numbers if TrialKey.PRESET not in trials[n].user_attrs]
    pairs = [sum(a.get(k) != b.get(k) for k in set(a) | set(b)) for a, b in itertools.combinations(keys, 2)]
    return float(np.mean(pairs)) if pairs else math.nan


def presets_alone(out: Path, runs: pd.DataFrame, protocol: val.Protocol, scales: dict) -> dict:
    """The floor every run shares: the HV of the validated presets alone, per run, averaged."""
    values = []
    for _, r in runs.iterrows():
        run_dir = out / f"{r['strategy']}-s{r['seed']}"
        if (run_dir / STUDY_DB).exists():
            study = optuna.load_study(study_name=run_dir.name, storage=storage_url(run_dir))
            presets = [t.number for t in study.get_trials(deepcopy=False) if TrialKey.PRESET in t.user_attrs]
            values.append(front_hypervolume(study, presets, protocol, scales))
    return {"strategy": "the 4 presets alone (no search)", "validated_hv": float(np.mean(values)) if values else math.nan,
            "validated_hv_sd": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan}


def run_one(out: Path, name: str, seed: int, budget: int, epochs: int, protocol: val.Protocol, val_max: int,
            cache: ValidationCache, scales: dict | None) -> tuple[dict, pd.DataFrame, dict]:
    study_name = f"{name}-s{seed}"
    args = ["--budget", str(budget), "--epochs", str(epochs), "--seed", str(seed), "--out", str(out),
            "--study", study_name, "--force", "--no-validate", "--sampler", name]
    cfg = config_from_args(build_parser().parse_args(args)).replace(quiet=True)
    began = time.perf_counter()
    search(cfg)
    study = optuna.load_study(study_name=study_name, storage=storage_url(out / study_name))
    # The trial phase (first trial started to last finished, sampler time included): start-up
    # that every strategy pays alike (Ray, data generation, the reference costs) is left out.
    start = min(t.datetime_start for t in study.trials if t.datetime_start).timestamp()
    wall = max(t.datetime_complete for t in study.trials if t.datetime_complete).timestamp() - start
    scales = scales or study.user_attrs[StudyKey.HYPERVOLUME_SCALES]  # one fixed reference for every run
    # The validated stage as the search runs it, with the benchmark's fixed protocol: seed 0 makes
    # the validation seeds 1000 and 1001 for every run (the search derives them from its own seed).
    val_cfg = cfg.replace(seed=0, val_height=protocol.height, val_width=protocol.width,
                                  val_epochs=protocol.epochs, val_seeds=len(protocol.seeds), val_max=val_max)
    assert val_cfg.protocol == protocol, (val_cfg.protocol, protocol)
    (hv, hv_log), val_s, validated, verdicts = validated_hypervolume(val_cfg, study, cache, scales)
    trials = sorted(counted_trials(study), key=lambda t: t.datetime_complete)
    curve = pd.DataFrame({"seconds": [t.datetime_complete.timestamp() - start for t in trials],
                          "hypervolume": hypervolume_history(trials, OBJECTIVES, scales)})
    curve["strategy"], curve["seed"], curve["budget"], curve["epochs"] = name, seed, budget, epochs
    row = {"strategy": name, "seed": seed, "budget": budget, "epochs": epochs, "val_epochs": protocol.epochs,
           "val_max": val_max, "validated_hv": hv, "validated_hv_log": hv_log,
           "search_hv": curve["hypervolume"].iloc[-1], "search_wall_s": wall, "validation_s": val_s,
           "total_s": wall + val_s, "validated_nets": len(validated),
           "complete": sum(t.user_attrs.get(TrialKey.STATUS) == Status.COMPLETE for t in trials),
           "spread": validated_spread(study, validated),
           "run_s": time.perf_counter() - began,  # what this run cost the benchmark, start-up and reports included
           **{f"preset_{name}": verdict for name, verdict in verdicts.items()}}
    return row, curve, scales


def paired(table: pd.DataFrame, baseline: str = "random") -> pd.DataFrame:
    """Per strategy: mean validated HV on linear and on log costs, and its paired (by seed) ratio to
    the baseline's with a 95 % bootstrap interval, the comparison every replay table also uses."""
    rows = []
    for name, runs in table.groupby("strategy"):
        row = {"strategy": name, "seeds": int(runs["validated_hv"].notna().sum()), "mean_total_s": runs["total_s"].mean()}
        for column, tag in (("validated_hv", ""), ("validated_hv_log", "log_")):
            if column in table and runs[column].notna().any():  # runs logged before log HV lack it
                ratio, low, high = paired_ratio(table, name, column, np.random.default_rng(0), baseline=baseline)
                row.update({column: runs[column].mean(), f"{column}_sd": runs[column].std(ddof=1),
                            f"{tag}ratio_to_{baseline}": ratio, f"{tag}ratio_low": low, f"{tag}ratio_high": high})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("validated_hv", ascending=False)


def headroom(n: int, protocol: val.Protocol, val_max: int, cache: ValidationCache, scales: dict, out: Path) -> dict:
    """A random pool of `n` nets at the first rung (1 epoch), its front validated like a run's;
    kept on disk (the pool takes a while), so a re-run of the benchmark reuses it."""
    path = RESULTS / f"search_quality_headroom_{n}_{protocol.epochs}ep_{val_max}val.json"
    if path.exists():
        return json.loads(path.read_text())
    row, _, _ = run_one(out, "random", 999, n, 1, protocol, val_max, cache, scales)
    result = {"strategy": f"headroom: random pool of {n} at 1 epoch", "validated_hv": row["validated_hv"],
              "validated_nets": row["validated_nets"], "total_s": row["total_s"], "run_s": row["run_s"]}
    path.write_text(json.dumps(result))
    return result


def plot(curves: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4))
    colors = dict(zip(STRATEGIES, ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    for (name, seed), c in curves.groupby(["strategy", "seed"]):
        ax.step(c["seconds"], c["hypervolume"], where="post", color=colors.get(name, "k"), alpha=0.7,
                label=name if seed == curves[curves.strategy == name].seed.min() else None)
    ax.set_xlabel("wall-clock seconds of the search")
    ax.set_ylabel("hypervolume at the search protocol")
    ax.set_title("Search-protocol hypervolume against wall-clock, by strategy and seed")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="random and local, 1 seed, budget 10, 2 epochs")
    p.add_argument("--budget", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--val-epochs", type=int, default=None, help="validation protocol epochs (10; quick 3)")
    p.add_argument("--val-max", type=int, default=3, help="searched nets validated per run (presets always)")
    p.add_argument("--strategies", default=None)
    p.add_argument("--headroom", type=int, default=0, help="size of the random first-rung pool (0: skip)")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = args.budget or (10 if args.quick else 20)
    epochs = args.epochs or (2 if args.quick else 3)
    seeds = range(args.seeds or (1 if args.quick else 5))
    strategies = (args.strategies or ("random,local" if args.quick else ",".join(STRATEGIES))).split(",")
    protocol = val.Protocol(32, 64, args.val_epochs or (3 if args.quick else 10), (1000, 1001))
    suffix = "_quick" if args.quick else ""
    out = RESULTS / f"search_quality_runs{suffix}"  # quick runs never replace a full run's studies
    curves_path = RESULTS / f"search_quality_curves{suffix}.csv"
    cache = ValidationCache(CACHE, protocol)
    log = RESULTS / f"search_quality_runs{suffix}.csv"
    columns = ["strategy", "seed", "budget", "epochs", "val_epochs", "val_max"]
    done = pd.read_csv(log) if log.exists() and log.stat().st_size else pd.DataFrame(columns=columns)
    setting = {"budget": budget, "epochs": epochs, "val_epochs": protocol.epochs, "val_max": args.val_max}
    done = done[np.logical_and.reduce([done[k] == v for k, v in setting.items()])]
    scales = None
    scales_path = RESULTS / f"search_quality_scales{suffix}.json"
    if scales_path.exists():
        scales = json.loads(scales_path.read_text())
    for seed in seeds:
        for name in strategies[seed % len(strategies):] + strategies[:seed % len(strategies)]:  # no fixed order
            if ((done["strategy"] == name) & (done["seed"] == seed)).any():
                continue  # resumed: this run is in the log
            row, curve, scales = run_one(out, name, seed, budget, epochs, protocol, args.val_max, cache, scales)
            scales_path.write_text(json.dumps(scales))
            logged = pd.read_csv(log) if log.exists() and log.stat().st_size else pd.DataFrame()
            pd.concat([logged, pd.DataFrame([row])]).to_csv(log, index=False)  # rewritten: columns may grow
            curve.to_csv(curves_path, mode="a", index=False, header=not curves_path.exists())
            print(f"{name} seed {seed}: validated HV {row['validated_hv']:.4f}, search {row['search_wall_s']:.0f} s "
                  f"+ validation {row['validation_s']:.0f} s", flush=True)
    table = pd.read_csv(log)
    table = table[np.logical_and.reduce([table[k] == v for k, v in setting.items()])
                  & table["strategy"].isin(strategies) & table["seed"].isin(list(seeds))]
    summary = paired(table) if "random" in strategies else table
    summary = pd.concat([summary, pd.DataFrame([presets_alone(out, table, protocol, scales)])])
    if args.headroom:
        # more nets validated than a run's: the pool's front is larger, and the figure is what it holds
        pool = headroom(args.headroom, protocol, max(args.val_max, 8), cache, scales, out)
        summary = pd.concat([summary, pd.DataFrame([pool])])
    save(summary, f"search_quality{suffix}")
    verdicts = [c for c in table.columns if c.startswith("preset_")]
    if verdicts:  # per run: is each hand-designed net dominated beyond the validation noise margin?
        print("\nEach preset's verdict per run (validated mIoU gain of the best net dominating it):")
        print(table.sort_values(["strategy", "seed"])[["strategy", "seed", *verdicts]].to_string(index=False))
    if curves_path.exists():
        curves = pd.read_csv(curves_path)
        plot(curves[(curves["budget"] == budget) & (curves["epochs"] == epochs)], RESULTS / f"search_quality{suffix}.png")
    print(f"\nbudget {budget} trials incl. 4 presets, {epochs} epochs, {len(seeds)} seed(s), validation {protocol.label()}, "
          f"{len(strategies)} strategies; {machine()}")


if __name__ == "__main__":
    main()
