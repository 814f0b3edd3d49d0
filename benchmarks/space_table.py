"""A tabular benchmark of the search space: one fixed random pool of nets, each with its search-
protocol learning curve, its validated mIoU, its exact costs and its training-free scores.

A search strategy can then be replayed on the table (which nets it would train, for how many
epochs) for many seeds at no training cost. One CSV row per net; columns:
- pool_seed, index: the key. The pool is `sample_specs` of the flat space with --pool-seed; net i
  of a pool is net i of every larger pool of that seed, so the pool can grow later. spec (the
  ArchSpec as a JSON dict; a re-run checks it against the pool) and tag.
- miou_e1..miou_eK, loss_e1..loss_eK, miou_search (= miou_eK), seconds_search: trained at the
  search protocol (nas.search's defaults: 32x64, K = 3 epochs, batch 16, lr 4e-3, seed 0), every
  epoch to the end (no early stopping), so each epoch's mIoU is what a rung at that epoch sees.
- miou_val_s1, miou_val_s2, miou_val (their mean), seconds_val: the validation protocol (10
  epochs, seeds 1000 and 1001, as the search's validated stage), for the first --validate-subset
  nets of the pool (all by default; the pool's order is random, so a prefix is a random subset),
  or for the nets listed in --validate-list: those that replayed strategies report (replay.py);
  validated_for says which ("subset" or "list": only the subset is a random sample).
- gmacs, params, params_deployed, peak_mem_mb (exact, at 32x64, as a trial measures them);
  latency_ms, latency_iqr_ms: ONNX Runtime at one thread, as a trial times it, but beside whatever
  else ran (with --workers 2 the other net's training): a noisy figure, to re-time alone if used.
- seconds_costs, seconds_scores, seconds_search, seconds_val: what each part cost (one thread).
- synflow, snip, grad_norm, fisher, jacob_cov, naswot (trainers.scores, seed 0, on one seeded
  minibatch of --score-batch training images, the same for every net).
- status (complete / failed), reason, and the protocol (size, epochs, seeds, data seed, batch).
Rows are appended as nets finish; a re-run skips the keys present, and validates the nets that
entered the validation subset since (that row is appended again; the last row of a key counts).

    python benchmarks/space_table.py --quick   # 4 nets, 1 + 2 epochs, to space_table_quick.csv
    python benchmarks/space_table.py --validate-subset 0   # the search protocol for the whole pool first
    python benchmarks/space_table.py [--pool 600] [--validate-subset N]   # then validation, in pool order
    python benchmarks/space_table.py --validate-subset 0 --validate-list results/bench/replay_needed.txt
    python benchmarks/space_table.py --summary   # scores against mIoU -> space_table_scores.csv
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, machine, run_logged, sample_specs  # noqa: E402
from trainers.scores import NAMES  # noqa: E402

KEY = ["pool_seed", "index"]
PROTOCOL = ["size", "search_epochs", "val_epochs", "val_seeds", "data_seed", "score_batch"]
COSTS = ["gmacs", "params", "params_deployed", "peak_mem_mb", "latency_ms", "latency_iqr_ms"]
SCORE_SEED = 0  # the networks' initialisation and the minibatch draw of the scores


def columns(epochs: int) -> list[str]:
    """Every row's columns, in one fixed order (rows are appended to one CSV)."""
    curve = [f"miou_e{e}" for e in range(1, epochs + 1)] + [f"loss_e{e}" for e in range(1, epochs + 1)]
    return [*KEY, "tag", "status", "reason", *COSTS, "seconds_costs", *NAMES, "seconds_scores", *curve, "miou_search",
            "seconds_search", "miou_val_s1", "miou_val_s2", "miou_val", "seconds_val", "validated_for", *PROTOCOL, "spec"]


_DATA: dict = {}


def _data(h: int, w: int, seed: int):
    from trainers.data import load_data

    if (h, w, seed) not in _DATA:  # one load per worker process
        _DATA[(h, w, seed)] = load_data(None, h, w, seed=seed)
    return _DATA[(h, w, seed)]


def measure(job: dict) -> dict:
    """One net in a worker process: costs, scores, the search-protocol curve (stage 'all'), then
    the validation trainings when asked (stage 'validate' adds them to the row of an earlier run)."""
    import torch

    from nas.trial import TrialSettings
    from search_spaces import ArchSpec
    from search_spaces.blocks.dupsample import fit_reconstruction
    from trainers.costs import measure_costs
    from trainers.scores import all_scores
    from trainers.train import fit

    warnings.simplefilter("ignore")
    torch.set_num_threads(job["threads"])
    h, w = map(int, job["size"].split("x"))
    spec, data = ArchSpec.from_dict(json.loads(job["spec"])), _data(h, w, job["data_seed"])
    settings = TrialSettings(threads=job["threads"])
    row = dict(job.get("row") or {k: job[k] for k in (*KEY, *PROTOCOL, "spec")}, tag=spec.tag())
    try:
        if job["stage"] == "all":
            from trainers.costs import default_backend

            start = time.perf_counter()
            costs = measure_costs(spec, "cpu", runs=settings.latency_runs, threads=job["threads"],
                                  backend=default_backend("cpu"))
            row.update({k: getattr(costs, k) for k in COSTS}, seconds_costs=time.perf_counter() - start)
            recon = None
            if spec.decoder.kind == "dupsample":  # as training fits it: on every training label, seed 0
                recon = fit_reconstruction(data.train.masks, spec.input.num_classes, spec.ratio, spec.decoder.width,
                                           data.info.ignore_index, SCORE_SEED)
            draw = torch.Generator().manual_seed(SCORE_SEED)
            pick = torch.randperm(len(data.train), generator=draw)[:job["score_batch"]]
            scores = all_scores(spec, data.train.images[pick], data.train.masks[pick], SCORE_SEED, recon).to_dict()
            row.update(seconds_scores=scores.pop("seconds"), **scores)
            result = fit(spec, data, settings.train_config(job["search_epochs"], settings.seed))
            for rec in result.history:
                row[f"miou_e{rec.epoch}"], row[f"loss_e{rec.epoch}"] = rec.miou, rec.loss
            row.update(miou_search=result.miou, seconds_search=result.train_seconds + result.eval_seconds)
            if not all(math.isfinite(r.miou) for r in result.history):
                raise RuntimeError(f"mIoU not finite: {[r.miou for r in result.history]}")
        if job["validate"]:
            seconds = 0.0
            seeds = [int(s) for s in job["val_seeds"].split("/")]
            for i, seed in enumerate(seeds, 1):
                result = fit(spec, data, settings.train_config(job["val_epochs"], seed))
                row[f"miou_val_s{i}"], seconds = result.miou, seconds + result.train_seconds + result.eval_seconds
            row.update(miou_val=float(np.mean([row[f"miou_val_s{i}"] for i in range(1, len(seeds) + 1)])),
                       seconds_val=seconds, validated_for=job["validated_for"])
        row.update(status="complete", reason="")
    except Exception as exc:  # deterministic training fails again on a re-run: keep the failure as a row
        row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
    return {c: row.get(c, math.nan) for c in columns(job["search_epochs"])}


def read_table(path: Path) -> pd.DataFrame:
    """The table, one row per key (the last written: a validation re-run appends the full row)."""
    table = pd.read_csv(path)
    return table.drop_duplicates(KEY, keep="last").sort_values(KEY).reset_index(drop=True)


def plan(table: pd.DataFrame | None, pool_seed: int, pool: int, chosen: list[int]) -> list[tuple[int, str, bool]]:
    """(index, stage, validate) of what is still to run: 'all' for nets without a row (in pool
    order), then 'validate' for complete nets among `chosen` that have no validated mIoU yet (in
    `chosen`'s order, so the nets a replay needs most go first)."""
    have = {} if table is None else {int(r.index): r for r in table[table["pool_seed"] == pool_seed].itertuples()}
    wanted = set(chosen)
    todo = [(i, "all", i in wanted) for i in range(pool) if i not in have]
    todo += [(i, "validate", True) for i in dict.fromkeys(chosen) if i in have and i < pool
             and have[i].status == "complete" and not np.isfinite(have[i].miou_val)]
    return todo


# --- the summary: how well each score ranks the nets ---------------------------------------------
def _ranks(x) -> np.ndarray:
    return pd.Series(np.asarray(x, dtype=float)).rank().to_numpy()


def spearman(x, y) -> float:
    return float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])


def partial_spearman(x, y, z) -> float:
    """Rank correlation of x and y given z: the Pearson correlation of the residuals of x's and
    y's ranks regressed (with intercept) on z's ranks. 0 when x's ranks are z's: x then says
    nothing that z does not (the residual is zero, its correlation otherwise undefined)."""
    rz = np.column_stack([np.ones(len(z)), _ranks(z)])
    res = [r - rz @ np.linalg.lstsq(rz, r, rcond=None)[0] for r in (_ranks(x), _ranks(y))]
    if any(e.std() <= 1e-9 * len(e) for e in res):
        return 0.0
    return float(np.corrcoef(*res)[0, 1])


def precision_in_bins(score, target, cost, bins: int = 5, top: float = 0.1) -> float:
    """Mean over equal-count bins of cost of |top `top` by score ∩ top `top` by target| / k: how well
    the score picks the best nets among those of about the same cost."""
    df = pd.DataFrame({"s": np.asarray(score, float), "t": np.asarray(target, float),
                       "b": pd.qcut(_ranks(cost), bins, labels=False)})
    hits = []
    for _, g in df.groupby("b"):
        k = max(1, round(top * len(g)))
        hits.append(len(set(g.nlargest(k, "s").index) & set(g.nlargest(k, "t").index)) / k)
    return float(np.mean(hits))


def random_validated(table: pd.DataFrame) -> pd.DataFrame:
    """The complete nets validated as the pool's first --validate-subset (a random subset: the
    pool's order is random), not those validated because a replay reported them (a biased one)."""
    return table[(table["status"] == "complete") & (table["validated_for"] == "subset") & table["miou_val"].notna()]


def summarise(table: pd.DataFrame, epochs: int | None = None) -> pd.DataFrame:
    """For each score (and the baselines params, GMACs and the first and last search-epoch mIoU),
    against the validated mIoU (on the random validated subset only) and
    against the search-protocol mIoU (every net): Spearman, the partial Spearman given log-GMACs,
    and precision at the top 10 % within GMACs quintiles."""
    epochs = epochs or max(int(c[6:]) for c in table.columns if c.startswith("miou_e"))
    complete = table[table["status"] == "complete"]
    rows = []
    for target in ("miou_val", "miou_search"):
        done = random_validated(table) if target == "miou_val" else complete
        for name in dict.fromkeys((*NAMES, "params", "gmacs", "miou_e1", f"miou_e{epochs}")):
            if name == target or (target == "miou_search" and name == f"miou_e{epochs}"):
                continue
            d = done[list(dict.fromkeys([name, target, "gmacs"]))].replace([np.inf, -np.inf], np.nan).dropna()
            x, y, g = d[name], d[target], d["gmacs"]
            few = len(d) < 10  # too few for a rank correlation; precision needs >= 1 top net per bin
            rows.append({"target": target, "score": name, "nets": len(d),
                         "spearman": math.nan if few else spearman(x, y),
                         "partial_spearman_given_gmacs": math.nan if few else partial_spearman(x, y, np.log(g)),
                         "precision_top10_in_gmacs_quintiles": precision_in_bins(x, y, g) if len(d) >= 50 else math.nan})
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", type=int, default=600, help="nets in the pool")
    p.add_argument("--pool-seed", type=int, default=0)
    p.add_argument("--validate-subset", type=int, default=None, help="validate the first N nets only (default: all)")
    p.add_argument("--validate-list", default=None,
                   help="validate these nets (a file of pool indices, most needed first; benchmarks/replay.py writes one)")
    p.add_argument("--epochs", type=int, default=3, help="search-protocol epochs")
    p.add_argument("--val-epochs", type=int, default=10)
    p.add_argument("--score-batch", type=int, default=32, help="images in the scores' minibatch")
    p.add_argument("--workers", type=int, default=1, help="nets trained at once (one thread each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--out", default=str(RESULTS), help="folder of space_table.csv and space_table_scores.csv")
    p.add_argument("--quick", action="store_true",
                   help="4 nets, 1 search epoch, 2 validation epochs, to space_table_quick*.csv")
    p.add_argument("--summary", action="store_true", help="only summarise the table there is")
    args = p.parse_args()
    if args.quick:
        args.pool, args.epochs, args.val_epochs = 4, 1, 2
    out, name = Path(args.out), "space_table_quick" if args.quick else "space_table"  # never mixed with the real table
    log, scores_path = out / f"{name}.csv", out / f"{name}_scores.csv"
    protocol = {"size": "32x64", "search_epochs": args.epochs, "val_epochs": args.val_epochs,
                "val_seeds": "1000/1001", "data_seed": 0, "score_batch": args.score_batch}
    table = read_table(log) if log.exists() else None
    if not args.summary:
        if table is not None:
            if list(pd.read_csv(log, nrows=0).columns) != columns(args.epochs):
                sys.exit(f"{log}: its columns are not this code's for {args.epochs} search epochs (another --epochs, "
                         "or a table from before a column was added); use another --out")
            other = table[[k for k in PROTOCOL]].astype(str).ne(pd.Series(protocol).astype(str)).any(axis=1)
            if other.any():
                sys.exit(f"{log}: {int(other.sum())} rows were made with another protocol than {protocol}; use another --out")
        from search_spaces import InputSpec
        from search_spaces.space import SearchSpace
        from trainers.data import load_data

        info = load_data(None, 32, 64, seed=0).info
        space = SearchSpace(InputSpec(height=32, width=64, in_channels=info.in_channels, num_classes=info.num_classes))
        specs = sample_specs(space, args.pool, args.pool_seed)
        subset = args.pool if args.validate_subset is None else min(args.validate_subset, args.pool)
        chosen = list(range(subset))
        if args.validate_list:
            chosen = [int(i) for i in Path(args.validate_list).read_text().split()]
        rows = {} if table is None else {int(r["index"]): r.to_dict() for _, r in table.iterrows()
                                         if r["pool_seed"] == args.pool_seed}
        changed = [i for i, r in rows.items() if i < args.pool and json.loads(r["spec"]) != specs[i].to_dict()]
        if changed:  # the space's declaration changed since: the same seed now draws other nets
            sys.exit(f"{log}: nets {changed[:5]} are not this code's pool of seed {args.pool_seed}; use another --out")
        jobs = [{"pool_seed": args.pool_seed, "index": i, "stage": stage, "validate": validate, "threads": args.threads,
                 "spec": json.dumps(specs[i].to_dict()), "row": rows.get(i) if stage == "validate" else None,
                 "validated_for": "list" if args.validate_list else "subset", **protocol}
                for i, stage, validate in plan(table, args.pool_seed, args.pool, chosen)]
        print(f"pool of {args.pool} (seed {args.pool_seed}), {len(chosen)} chosen for validation: {len(jobs)} jobs to run  [{machine()}]",
              flush=True)
        run_logged(measure, jobs, log, args.workers, show=lambda r: (
            f"net {r['index']} {r['status']} {r['tag']} gmacs {r['gmacs']:.4g} search {r['miou_search']:.4f} "
            f"val {r['miou_val']:.4f} ({r['seconds_search']:.0f} s + {r['seconds_val']:.0f} s) {r['reason']}"))
        if not log.exists():
            sys.exit("no net to run")
        table = read_table(log)
        if len(table) < sum(1 for _ in log.open()) - 1:  # superseded rows of validated nets: keep the file small
            tmp = log.with_name(log.name + ".tmp")
            table.to_csv(tmp, index=False)
            tmp.replace(log)
    if table is None:
        sys.exit(f"{log}: no table yet")
    if "validated_for" not in table:
        sys.exit(f"{log}: no validated_for column (a table from before it was added): say which nets are the random subset")
    summary = summarise(table)
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(scores_path, index=False)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\n{len(table)} nets, {int(table['miou_val'].notna().sum())} validated; wrote {scores_path}  ({machine()})")


if __name__ == "__main__":
    main()
