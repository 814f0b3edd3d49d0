"""What the search learned: which axes matter for each objective, and how each choice of an axis fares.

Made from the trials table alone (so every statement can be checked against trials.csv). mIoU uses
only fully trained trials (early-stopped ones never reached the last epoch) at the search protocol;
the validated mIoU is a separate metric, not mixed in, because it comes from another protocol
(longer training, more seeds) and would favour the axes of the nets chosen for validation.
Costs come from every trial that measured them, stopped ones included (GMACs, parameters and
memory exactly; latency as measured in the trial).

Importance is Optuna's fANOVA: the share of the metric's variance each axis explains, costs on a
log scale (they span orders of magnitude and compose multiplicatively). On this space's runs it
names the physically expected axes (GMACs: the decomposition ratio, ~0.8; memory: ratio and TVConv),
where PED-ANOVA's best-10 % contrast, over a few dozen trials, ranked dropout first for latency.
Below MIN_TRIALS trials a metric is not assessed, and a choice seen in fewer than MIN_GROUP trials
is left out of the statements.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import optuna
import pandas as pd

from search_spaces.space import DILATION_SCHEDULES

from .records import Status

MIN_TRIALS = 20
MIN_GROUP = 5
# The axes of the space, as columns of the trials table (the stages' widths, depths and dropouts too).
AXES = ("stages[0].core", "stages[1].core", "stages[2].core", "decoder.kind", "ratio", "tvconv_from", "downsampler",
        "stages[0].kernel", "stages[1].kernel", "stages[2].kernel",
        "stages[0].dilations", "stages[1].dilations", "stages[2].dilations")
OTHER_AXES = tuple(f"stages[{i}].{f}" for i in range(3) for f in ("width", "depth", "dropout"))
# the trials table writes dilation schedules as "2-4-8-16": plots name them as the space does
SCHEDULES = {"-".join(map(str, v)): k for k, v in DILATION_SCHEDULES.items()}
# metric column -> (label, higher is better)
METRICS = {"miou": ("mIoU (fully trained, search protocol)", True),
           "miou_validated": ("mIoU (validated mean)", True),
           "gmacs": ("GMACs", False), "latency_ms": ("latency ms", False), "peak_mem_mb": ("peak memory MB", False),
           "params": ("parameters", False)}


@dataclass(frozen=True)
class Effect:
    """The most important axis for one metric, and its best and worst choice by median."""

    metric: str
    axis: str
    importance: float  # fANOVA's share of the variance, normalised over the axes
    trials: int  # how many trials the importance rests on
    best: str
    best_median: float
    best_n: int
    worst: str
    worst_median: float
    worst_n: int
    device: str | None = None  # where the latency was measured (a --latency-target board), where named

    def sentence(self) -> str:
        label = metric_label(self.metric, self.device)
        return (f"{label}: {self.axis} matters most (importance {self.importance:.2f} over {self.trials} trials); "
                f"median {_num(self.best_median)} with {self.axis} = {self.best} (n={self.best_n}) vs "
                f"{_num(self.worst_median)} with {self.worst} (n={self.worst_n}).")


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def metric_rows(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The trials a metric's statements rest on: mIoU of fully trained trials only; costs wherever measured."""
    if metric not in table or not len(table):
        return table.iloc[0:0]
    rows = table[pd.to_numeric(table[metric], errors="coerce").notna()]
    if metric == "miou":
        rows = rows[rows["state"] == Status.COMPLETE]
    return rows[[c for c in (*AXES, *OTHER_AXES) if c in rows] + [metric]].dropna()


def importances(rows: pd.DataFrame, metric: str) -> dict[str, float]:
    """Optuna's fANOVA importance of every axis for `metric` (costs in log), over `rows`."""
    from optuna.distributions import CategoricalDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    axes = [a for a in (*AXES, *OTHER_AXES) if a in rows and rows[a].nunique() > 1]
    if not axes:
        return {}
    values = {a: sorted(rows[a].astype(str).unique()) for a in axes}
    dists = {a: CategoricalDistribution(v) for a, v in values.items()}
    target = rows[metric].astype(float) if METRICS[metric][1] else np.log(rows[metric].astype(float).clip(lower=1e-12))
    study = optuna.create_study(direction="maximize" if METRICS[metric][1] else "minimize")
    study.add_trials([optuna.trial.create_trial(params={a: str(r[a]) for a in axes}, distributions=dists, value=float(v))
                      for (_, r), v in zip(rows.iterrows(), target)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), params=axes, normalize=True)
    return {a: float(v) for a, v in imp.items()}


def marginal(rows: pd.DataFrame, axis: str, metric: str) -> pd.DataFrame:
    """Per choice of `axis`: trials, median and quartiles of `metric`, best median first."""
    g = rows.groupby(rows[axis].astype(str))[metric]
    out = pd.DataFrame({"n": g.size(), "median": g.median(), "q25": g.quantile(0.25), "q75": g.quantile(0.75)})
    return out.sort_values("median", ascending=not METRICS[metric][1], kind="stable")


def metric_label(metric: str, device: str | None = None) -> str:
    """The metric as plots and tables name it; the latency naming the `device` it was measured on
    (a --latency-target board), where one is given."""
    label = METRICS[metric][0]
    return f"{label} on {device}" if device and metric == "latency_ms" else label


def effects(table: pd.DataFrame, metrics: Sequence[str], device: str | None = None) -> tuple[pd.DataFrame, list[Effect]]:
    """The importance table (axes x metrics) and one Effect per metric with enough trials; `device`
    names where the latency was measured (its column says so)."""
    columns, found = {}, []
    for metric in metrics:
        rows = metric_rows(table, metric)
        if len(rows) < MIN_TRIALS or rows[metric].nunique() < 2:
            continue
        try:
            imp = importances(rows, metric)
        except RuntimeError:  # fANOVA finds no variance to decompose (e.g. every net predicts one class)
            continue
        where = f" on {device}" if device and metric == "latency_ms" else ""
        columns[f"{metric}{where} ({len(rows)} trials)"] = imp
        for axis in sorted(imp, key=imp.get, reverse=True):
            m = marginal(rows, axis, metric)
            m = m[m["n"] >= MIN_GROUP]
            if len(m) >= 2:
                best, worst = m.iloc[0], m.iloc[-1]
                found.append(Effect(metric, axis, float(imp[axis]), len(rows), str(m.index[0]), float(best["median"]),
                                    int(best["n"]), str(m.index[-1]), float(worst["median"]), int(worst["n"]),
                                    device if metric == "latency_ms" else None))
                break
    table_out = pd.DataFrame(columns).fillna(0.0)
    if len(table_out):
        table_out = table_out.loc[table_out.max(axis=1).sort_values(ascending=False).index]
    return table_out, found


def run_metrics(objective_keys: Sequence[str], table: pd.DataFrame) -> list[str]:
    """The metrics to explain: the run's objectives, then the validated mIoU where it exists."""
    keys = [k for k in objective_keys if k in METRICS]
    if "miou_validated" in table and table["miou_validated"].notna().sum() >= MIN_TRIALS:
        keys.insert(1, "miou_validated")
    return keys


def plot_marginals(run_dir, table: pd.DataFrame, metrics: Sequence[str], device: str | None = None) -> list:
    """marginals_<metric>.png: the distribution of the metric for each choice of each axis (the latency's
    title naming the `device` it was measured on, where one is given)."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    paths = []
    for metric in metrics:
        rows = metric_rows(table, metric)
        if len(rows) < MIN_TRIALS:
            continue
        axes = [a for a in AXES if a in rows]
        cols = 4
        fig, grid = plt.subplots(math.ceil(len(axes) / cols), cols, figsize=(14, 2.6 * math.ceil(len(axes) / cols)))
        for ax, axis in zip(np.ravel(grid), axes):
            groups = rows.groupby(rows[axis].astype(str))[metric]
            names = list(groups.groups)
            ax.boxplot([groups.get_group(n).to_numpy() for n in names], showfliers=False)
            ax.set_xticks(range(1, len(names) + 1), [f"{SCHEDULES.get(n, n)}\n(n={len(groups.get_group(n))})"
                                                     for n in names], fontsize=7)
            ax.set_title(axis, fontsize=9)
            ax.grid(alpha=0.3)
            if metric != "miou" and metric != "miou_validated":
                ax.set_yscale("log")
        for ax in np.ravel(grid)[len(axes):]:
            ax.axis("off")
        fig.suptitle(f"{metric_label(metric, device)} by choice ({len(rows)} trials)")
        fig.tight_layout()
        paths.append(_save(fig, run_dir / f"marginals_{metric}.png"))
        plt.close(fig)
    return paths
