"""Shared by the benchmark scripts: where results go, how tables are printed."""
from __future__ import annotations

import platform
from pathlib import Path

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
