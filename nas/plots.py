"""The run's figures: mIoU against each cost (with seed spreads once validated), hypervolume over time."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from .pareto import Objective
from .records import Status


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def plot_fronts(run_dir: Path, table: pd.DataFrame, front: list[int], objectives: Sequence[Objective],
                search_label: str, validated_label: str | None) -> list[Path]:
    """pareto_<cost>.png for each cost (see `front_figure`)."""
    plt = _pyplot()
    paths = []
    for cost in (o for o in objectives if o.direction == "minimize"):
        fig = front_figure(table, front, cost, search_label, validated_label)
        paths.append(_save(fig, run_dir / f"pareto_{cost.name}.png"))
        plt.close(fig)
    return paths


def front_figure(table: pd.DataFrame, front: list[int], cost: Objective, search_label: str,
                 validated_label: str | None):
    """mIoU against one cost. Search-protocol trials faint; once validated, the candidates at their
    validated mean with +-1 standard deviation bars, the front joined in red. Every preset is a
    named star wherever it lies, on the front or not; the legend lists only what is drawn."""
    plt = _pyplot()
    done = table[table["state"] == Status.COMPLETE] if len(table) else table
    validated = validated_label is not None and "miou_validated" in done
    x_key = "latency_ms_isolated" if validated and cost.key == "latency_ms" else cost.key
    y = "miou_validated" if validated else "miou"
    fig, ax = plt.subplots(figsize=(8.8, 4.8))
    if len(done):
        ax.scatter(done[cost.key], done["miou"], s=12, alpha=0.25, color="tab:gray", label=f"trials ({search_label})")
        pts = done[done["miou_validated"].notna()] if validated else done[done["trial"].isin(front)]
        if validated and len(pts):
            ax.errorbar(pts[x_key], pts[y], yerr=pts["miou_validated_std"].fillna(0), fmt="o", ms=4, color="black",
                        ecolor="0.4", capsize=2, label=f"validated ({validated_label}), mean +- sd")
        on = pts[pts["trial"].isin(front)]
        if len(on):
            ax.scatter(on[x_key], on[y], s=30, color="tab:red", zorder=3, label="Pareto front (all objectives)")
            stair = on.sort_values(x_key)
            stair = stair[stair[y] >= stair[y].cummax()]
            ax.step(stair[x_key], stair[y], where="post", color="tab:red", lw=1)
        _draw_presets(ax, done, pts, x_key, y, cost.key, validated)
    ax.set_xlabel(cost.label + (", measured alone" if x_key != cost.key else ""))
    ax.set_ylabel("validation mIoU")
    ax.set_title(f"mIoU vs {cost.name}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    return fig


def _draw_presets(ax, done: pd.DataFrame, pts: pd.DataFrame, x_key: str, y: str, search_x: str,
                  validated: bool) -> None:
    """Each preset where its best-known values put it: its validated mean once validated, else its
    search-protocol point (among the faint trials, as a hollow star once the plot shows validated values)."""
    presets = done[done["preset"].fillna("") != ""]
    if not validated:  # one protocol on the whole plot: every preset at its search-protocol point
        groups = [(presets, x_key, y, dict(color="tab:blue"), "hand-designed presets")]
    else:
        known = presets["trial"].isin(pts["trial"])
        groups = [(presets[known], x_key, y, dict(color="tab:blue"), "hand-designed presets (validated)"),
                  (presets[~known], search_x, "miou", dict(facecolors="none", edgecolors="tab:blue"),
                   "hand-designed presets (search protocol only)")]
    for rows, xk, yk, style, label in groups:
        if not len(rows):
            continue
        ax.scatter(rows[xk], rows[yk], marker="*", s=130, zorder=4, label=label, **style)
        for _, row in rows.iterrows():
            ax.annotate(row["preset"], (row[xk], row[yk]), textcoords="offset points", xytext=(5, 4))


def plot_hypervolume(run_dir: Path, history: list[float]) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(range(1, len(history) + 1), history, color="tab:green")
    ax.set_xlabel("trials finished")
    ax.set_ylabel("hypervolume (normalised, search protocol)")
    ax.set_title("Hypervolume of the search-protocol front")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = _save(fig, run_dir / "hypervolume.png")
    plt.close(fig)
    return path
