"""Replay search strategies on the tabular benchmark of the space (results/bench/space_table.csv).

Each strategy decides which pool nets to train and for how many epochs; the table says what each
epoch's search-protocol mIoU would be, so a run costs milliseconds and dozens of paired seeds are
cheap. Compute is charged in epochs of the training set (epochs x images; every net sees the same
images), and every strategy gets the same budget: what random search spends training `--nets` nets
for the full 3 epochs. A run reports what the live search would: the front of its fully trained
nets by search-protocol mIoU and exact costs, at most `VAL_MAX` of them (by crowding distance) go
to the validated stage, and its score is the hypervolume of those nets at their validated mIoU
(the table's mean of two seeds, 10 epochs) — on log-scaled costs (the comparisons' scale) and on
linear ones. The validated stage costs every strategy the same, so it is not charged.

Objectives: mIoU, GMACs and peak activation memory. The table's latency was timed beside another
training, too noisy to rank nets by; GMACs and memory are exact. The presets are not in the pool.

    python benchmarks/replay.py --pool 150      # every strategy, 50 paired seeds -> replay.csv
    python benchmarks/replay.py --pool 150 --screens=naswot,-synflow   # screening by other scores too
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, machine, paired_ratio  # noqa: E402
from benchmarks.replay_pool import COSTS, EPOCHS, Pool, Run, load_pool, screened  # noqa: E402,F401
from nas.pareto import non_domination_ranks  # noqa: E402
from nas.screening import Ensemble, expected_gains  # noqa: E402


# --- the strategies: each spends run.budget ---------------------------------------------------
def random_search(run: Run) -> None:
    for i in run.draw(len(run.pool)):
        if not run.affords(EPOCHS):
            return
        run.full(None, i)


def halving(eta: int):
    def strategy(run: Run) -> None:
        for i in run.draw(len(run.pool)):
            if not run.affords(1):
                return
            run.full(eta, i)
    return strategy


def _guided(pick, eta: int = 2, startup: int = 4, first: int = 32, refill: int = 2):
    """A sampler that chooses each next net with `pick(run, candidates)` (a pool index) among the
    untried nets revealed so far: `first` at the start and `refill` more per net started, as the
    live sampler measures a pool's costs (nas.screening); successive halving decides how long
    each net trains, as the search's executor does."""
    def strategy(run: Run) -> None:
        order = run.draw(len(run.pool))
        revealed = first
        while run.affords(1) and len(run.untried()):
            cands = np.array([i for i in order[:revealed] if run.reached[i] == 0] or run.untried()[:1])
            started = int((run.reached > 0).sum())
            i = cands[0] if started < startup else pick(run, cands)
            run.full(eta, int(i))
            revealed += refill
    return strategy


def _stratified(run: Run, cands: np.ndarray) -> int:
    """The candidate in the widest gap of the front along a randomly chosen (log) cost."""
    j = int(run.rng.integers(len(COSTS)))
    front = run.front()
    edges = np.sort(np.concatenate([[0.0, 1.0], front[:, 1 + j]])) if len(front) else np.array([0.0, 1.0])
    c = np.array([run.log(i, 0.0)[1 + j] for i in cands])
    slot = np.clip(np.searchsorted(edges, c), 1, len(edges) - 1)
    return int(cands[np.argmax(edges[slot] - edges[slot - 1])])


def _screened(run: Run, cands: np.ndarray) -> int:
    return int(cands[np.argmax(run.pool.score[cands])])


def _predicted(run: Run, cands: np.ndarray, scores: bool = False) -> int:
    """Largest expected hypervolume gain, mIoU from a bootstrap ensemble fitted on every net trained
    so far (at the epoch it reached, flagged), predicted as if fully trained."""
    seen = np.flatnonzero(run.reached > 0)
    flags = np.array([[float(run.reached[i] == e) for e in range(1, EPOCHS)] for i in seen])
    pool_x = run.pool.xs if scores else run.pool.x
    x = np.column_stack([pool_x[seen], flags])
    y = 1.0 - run.pool.curve[seen, run.reached[seen] - 1]
    model = Ensemble(x, y, run.rng)
    samples = model.samples(np.column_stack([pool_x[cands], np.zeros((len(cands), EPOCHS - 1))]))
    costs = np.array([run.log(i, 0.0)[1:] for i in cands])
    return int(cands[np.argmax(expected_gains(run.front(), costs, np.clip(samples, 0.0, 1.0)))])


def _local(run: Run, cands: np.ndarray) -> int:
    """A candidate near a front member (one or two choices away), or a random one a quarter of the time."""
    front = np.flatnonzero(run.reached == EPOCHS)
    if run.rng.random() < 0.25 or not len(front):
        return int(cands[0])
    rows = np.array([run.log(i, run.pool.curve[i, -1]) for i in front])
    members = front[non_domination_ranks(rows) == 0]
    parent = members[run.rng.integers(len(members))]
    free = run.untried()
    d = np.abs(run.pool.code[free] - run.pool.code[parent]).sum(1)
    near = free[np.argsort(d, kind="stable")[:3]]
    return int(near[run.rng.integers(len(near))])


STRATEGIES = {
    "random": random_search,
    "halving": halving(2),
    "halving_wide": halving(4),
    "stratified": _guided(_stratified),
    "screen": _guided(_screened),
    "predictor": _guided(_predicted),
    "predictor_scores": _guided(lambda run, cands: _predicted(run, cands, scores=True)),
    "local": _guided(_local),
}


def replay(pool: Pool, name: str, nets: int, seed: int) -> dict:
    run = Run(pool, nets * EPOCHS, np.random.default_rng([seed, 7]))
    STRATEGIES[name](run)
    return {"strategy": name, "seed": seed, "nets": nets, "spent_epochs": run.spent,
            "reported": " ".join(str(pool.index[i]) for i in run.reported()),
            "trained": int((run.reached > 0).sum()), "full": int((run.reached == EPOCHS).sum()),
            "hv_log": run.validated_hv("log"), "hv_lin": run.validated_hv("lin")}


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (nets, name), g in runs.groupby(["nets", "strategy"], sort=False):
        row = {"nets": nets, "strategy": name, "seeds": len(g), "spent_epochs": g.spent_epochs.mean(),
               "trained": g.trained.mean()}
        for col in ("hv_log", "hv_lin"):
            # a generator per strategy: its interval does not depend on which others were replayed
            ratio, lo, hi = paired_ratio(runs[runs.nets == nets], name, col, np.random.default_rng(0))
            row.update({col: g[col].mean(), f"{col}_sd": g[col].std(), f"{col}_ratio": ratio,
                        f"{col}_lo": lo, f"{col}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def needed(runs: pd.DataFrame, pool: Pool) -> list[int]:
    """Table indices of reported nets without a validated mIoU, the most often reported first."""
    counts = pd.Series(" ".join(runs["reported"]).split()).astype(int).value_counts()
    have = set(pool.index[~np.isnan(pool.val)])
    return [int(i) for i in counts.index if i not in have]


def reference_scales() -> dict:
    """The search's hypervolume reference at 32x64: twice the costliest preset's GMACs and memory
    (both exact, as nas.study.reference_scales measures them; no latency needed here)."""
    from search_spaces import build_model, load_preset
    from search_spaces.presets import PRESET_NAMES
    from trainers.costs import count_gmacs, measure_peak_memory_mb

    specs = [load_preset(n, 32, 64, 8, 3) for n in PRESET_NAMES]
    gmacs = [count_gmacs(build_model(s).eval(), s) for s in specs]
    memory = [measure_peak_memory_mb(build_model(s), s) for s in specs]
    return {"gmacs": 2.0 * max(gmacs), "peak_mem_mb": 2.0 * max(memory)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", default=str(RESULTS / "space_table.csv"))
    p.add_argument("--pool", type=int, default=None,
                   help="replay on the table's first N nets (default: all); every net a run reports needs its validated mIoU")
    p.add_argument("--pool-from", type=int, default=0,
                   help="the pool's first net: another slice of the table (e.g. 150) checks a choice made on the first")
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--nets", default="20", help="budgets, comma list: random search's nets at full training")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--name", default="replay", help="the outputs' name: NAME.csv, NAME_runs.csv, NAME_needed.txt")
    p.add_argument("--screens", default="",
                   help='also replay screening by these scores: a comma list, "-" first for lower is better '
                        '(write --screens=-fisher,naswot: a value that starts with "-" needs the "=")')
    args = p.parse_args()
    from trainers.scores import NAMES

    unknown = [n for n in args.strategies.split(",") if n not in STRATEGIES]
    if unknown:
        p.error(f"--strategies: {', '.join(unknown)} unknown; choose from {', '.join(STRATEGIES)}")
    if "random" not in args.strategies.split(","):
        p.error(f"--strategies {args.strategies}: random is missing; every ratio is to random search")
    screens = [x for x in args.screens.split(",") if x]
    for x in screens:
        if x.lstrip("-") not in NAMES:
            p.error(f"--screens: {x!r} is not a score; one of {', '.join(NAMES)}, with a leading - for lower is better")
    if not Path(args.table).is_file():
        p.error(f"--table {args.table}: no such file (benchmarks/space_table.py writes it)")
    pool = load_pool(Path(args.table), reference_scales(), args.pool, start=args.pool_from)
    if len(pool) < 2:
        p.error(f"--pool-from {args.pool_from} --pool {args.pool}: {len(pool)} complete nets of the table there")
    start = time.perf_counter()
    runs = [replay(pool, name, int(n), seed) for n in args.nets.split(",")
            for name in args.strategies.split(",") for seed in range(args.seeds)]
    for x in screens:  # the screen strategy on another score's ranking, named after it
        other = replace(pool, score=screened(pool.raw_scores, pool.costs[:, 0], x))
        runs += [{**replay(other, "screen", int(n), seed), "strategy": f"screen {x}"}
                 for n in args.nets.split(",") for seed in range(args.seeds)]
    runs = pd.DataFrame(runs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    runs.to_csv(RESULTS / f"{args.name}_runs.csv", index=False)
    missing = needed(runs, pool)
    (RESULTS / f"{args.name}_needed.txt").unlink(missing_ok=True)  # a list from an earlier run would mislead
    if len(missing):
        (RESULTS / f"{args.name}_needed.txt").write_text("\n".join(map(str, missing)) + "\n")
        print(f"{len(missing)} reported nets have no validated mIoU yet, most reported first in "
              f"{RESULTS / f'{args.name}_needed.txt'}: validate them with space_table.py --validate-list; "
              f"{int(runs.hv_log.notna().sum())} of {len(runs)} runs are scored")
        runs = runs[runs.groupby(["nets", "seed"]).hv_log.transform(lambda v: v.notna().all())]  # keep the pairs whole
        if runs.empty:
            return
    summary = summarise(runs)
    summary.to_csv(RESULTS / f"{args.name}.csv", index=False)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\npool of {len(pool)} validated nets; {len(runs)} runs in {time.perf_counter() - start:.0f} s  "
          f"[{machine()}]\nwrote {RESULTS / f'{args.name}.csv'}")


if __name__ == "__main__":
    main()
