"""Shared by the benchmark scripts: where results go, how tables are printed."""
from __future__ import annotations

import math
import platform
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from search_spaces import ArchSpec
from search_spaces.space import SearchSpace

RESULTS = Path(__file__).resolve().parent.parent / "results" / "bench"


def machine() -> str:
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, torch {torch.__version__}{gpu}".strip()


def save(table: pd.DataFrame, name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    table.to_csv(path, index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nwrote {path}  ({machine()})")
    return path


def run_logged(train: Callable[[dict], dict], jobs: list[dict], log: Path, workers: int,
               show: Callable[[dict], str] = str) -> None:
    """Run `train` on every job in `workers` processes; each result row is appended to the CSV `log`
    as soon as it arrives, so a killed benchmark resumes from what it has (rows need fixed keys).
    `show` makes the progress line of a row."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(train, j): j for j in jobs}
        for i, fut in enumerate(as_completed(futures), 1):
            try:
                row = pd.DataFrame([fut.result()])
            except Exception as exc:  # one diverged training must not discard the others; a re-run retries it
                print(f"[{i}/{len(jobs)}] failed {futures[fut]}: {type(exc).__name__}: {exc}", flush=True)
                continue
            row.to_csv(log, mode="a", header=not log.exists(), index=False)
            print(f"[{i}/{len(jobs)}] {show(row.iloc[0].to_dict())}", flush=True)


def sample_specs(space: SearchSpace, n: int, seed: int) -> list[ArchSpec]:
    """`n` architectures drawn uniformly from the space (seeded), as a random-search baseline would."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    specs = []
    for _ in range(n):
        trial = study.ask()
        specs.append(space.sample(trial))
        study.tell(trial, 0.0)
    return specs


def paired_ratio(runs: pd.DataFrame, name: str, column: str, rng: np.random.Generator, draws: int = 4000,
                 baseline: str = "random") -> tuple[float, float, float]:
    """Mean `column` of strategy `name` over the baseline's on the same seeds, with a 95 % bootstrap
    interval (seeds resampled in pairs)."""
    a = runs[runs.strategy == name].set_index("seed")[column].dropna()
    b = runs[runs.strategy == baseline].set_index("seed")[column].reindex(a.index)
    a, b = a[b.notna()], b[b.notna()]
    if len(a) < 2:  # one pair has no spread to resample
        return float(a.mean() / b.mean()) if len(a) else math.nan, math.nan, math.nan
    idx = rng.integers(0, len(a), (draws, len(a)))
    boot = a.to_numpy()[idx].mean(1) / b.to_numpy()[idx].mean(1)
    return float(a.mean() / b.mean()), *map(float, np.percentile(boot, [2.5, 97.5]))
