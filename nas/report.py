"""Results files, regenerated from the study every time: CSVs, YAMLs, plots, the HTML report.

Every file is written atomically (temporary file + rename), so a kill never leaves half a file.
"""
from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Sequence

import optuna
import pandas as pd
import yaml

from .pareto import Objective, counted_trials, front_trials, hypervolume_history, pick, trial_spec, trials_table


def atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def write_results(run_dir: Path, study: optuna.Study, objectives: Sequence[Objective], scales: dict[str, float],
                  config: dict, how: str = "knee") -> pd.DataFrame:
    """Write every output of a run; returns the front table."""
    table = trials_table(study)
    atomic_write(run_dir / "trials.csv", table.to_csv(index=False))
    front = front_trials(study)
    numbers = [t.number for t in front]
    front_table = table[table["trial"].isin(numbers)] if len(table) else table
    atomic_write(run_dir / "pareto.csv", front_table.to_csv(index=False))
    pareto_dir = run_dir / "pareto"
    pareto_dir.mkdir(exist_ok=True)
    for stale in pareto_dir.glob("*.yaml"):
        if int(stale.stem.split("_")[-1]) not in numbers:
            stale.unlink()
    for t in front:
        atomic_write(pareto_dir / f"trial_{t.number:04d}.yaml", trial_spec(t).to_yaml())
    if front:
        atomic_write(run_dir / "best.yaml", trial_spec(pick(front, objectives, how)).to_yaml())
    atomic_write(run_dir / "config.yaml", yaml.safe_dump({**config, "hypervolume_scales": scales}, sort_keys=False))
    history = hypervolume_history(counted_trials(study), objectives, scales)
    plots = plot_fronts(run_dir, table, numbers, objectives) + [plot_hypervolume(run_dir, history)]
    write_html(run_dir, front_table, plots, config, history)
    return front_table


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


def plot_fronts(run_dir: Path, table: pd.DataFrame, front: list[int], objectives: Sequence[Objective]) -> list[Path]:
    """pareto_<cost>.png: mIoU against each cost; all trials faint, front joined, presets labelled."""
    plt = _pyplot()
    paths = []
    done = table[table["state"] == "complete"] if len(table) else table
    for cost in (o for o in objectives if o.direction == "minimize"):
        fig, ax = plt.subplots(figsize=(8.4, 4.6))
        if len(done):
            ax.scatter(done[cost.key], done["miou"], s=14, alpha=0.3, color="tab:gray", label="trials (trained)")
            on = done[done["trial"].isin(front)]
            # the 2-D projection of a many-objective front: highlight members, join the 2-D staircase
            ax.scatter(on[cost.key], on["miou"], s=28, color="tab:red", label="Pareto front (all objectives)")
            stair = on.sort_values(cost.key)
            stair = stair[stair["miou"] >= stair["miou"].cummax()]
            ax.step(stair[cost.key], stair["miou"], where="post", color="tab:red", lw=1)
            for _, row in done[done["preset"].fillna("") != ""].iterrows():
                ax.scatter(row[cost.key], row["miou"], marker="*", s=120, color="tab:blue", zorder=3)
                ax.annotate(row["preset"], (row[cost.key], row["miou"]), textcoords="offset points", xytext=(5, 4))
            ax.scatter([], [], marker="*", s=120, color="tab:blue", label="hand-designed presets")
        ax.set_xlabel(cost.label)
        ax.set_ylabel("validation mIoU")
        ax.set_title(f"mIoU vs {cost.name}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        fig.tight_layout()
        paths.append(_save(fig, run_dir / f"pareto_{cost.name}.png"))
        plt.close(fig)
    return paths


def plot_hypervolume(run_dir: Path, history: list[float]) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(range(1, len(history) + 1), history, color="tab:green")
    ax.set_xlabel("trials finished")
    ax.set_ylabel("hypervolume (normalised objectives)")
    ax.set_title("Hypervolume of the front over the search")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = _save(fig, run_dir / "hypervolume.png")
    plt.close(fig)
    return path


def write_html(run_dir: Path, front_table: pd.DataFrame, plots: list[Path], config: dict, history: list[float]) -> None:
    """report.html: one self-contained page (images inlined)."""
    imgs = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}" alt="{p.name}"/>'
        f"<figcaption>{p.name}</figcaption></figure>" for p in plots
    )
    cols = [c for c in ("trial", "preset", "tag", "miou", "gmacs", "latency_ms", "peak_mem_mb", "params") if c in front_table]
    table = front_table[cols].to_html(index=False, float_format=lambda v: f"{v:.4g}") if len(front_table) else "<p>empty</p>"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(config['study'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} figure{{display:inline-block;margin:.5em}}
img{{max-width:560px}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px}}</style></head><body>
<h1>Search {html.escape(config['study'])}</h1>
<p>Final hypervolume {history[-1] if history else 0:.4f} after {len(history)} trials. GMACs count one multiply-add as one, at batch 1.</p>
<h2>Pareto front</h2>{table}<h2>Plots</h2>{imgs}
<h2>Configuration</h2><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre></body></html>"""
    atomic_write(run_dir / "report.html", page)
