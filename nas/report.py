"""Results files, regenerated from the study every time: CSVs, YAMLs, plots, the HTML report.

Once the validated stage has run, the front, pareto.csv, pareto/*.yaml and best.yaml come from the
validated values (mean mIoU over seeds at the validation protocol, latency measured alone);
trials.csv keeps the search-protocol values beside them. Every file is written atomically
(temporary file + rename), so a kill never leaves half a file.
"""
from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path
from typing import Sequence

import optuna
import pandas as pd
import yaml

from .pareto import (Objective, counted_trials, front_trials, hypervolume, hypervolume_history, log_losses, losses, pick,
                     trial_spec, trials_table)
from . import insight
from .plots import plot_fronts, plot_hypervolume
from .records import StudyKey
from .target import labelled, latency_source, with_target_columns
from .validate import Validation, indistinguishable, preset_dominance

FRONT_COLUMNS = ("trial", "preset", "tag", "miou", "miou_std", "miou_search", "gmacs", "latency_ms",
                 "latency_ms_search", "peak_mem_mb", "params")


def atomic_write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def front_table(table: pd.DataFrame, study: optuna.Study, validation: Validation | None) -> pd.DataFrame:
    """The front's rows. Validated: mIoU is the validated mean (`miou_std` its spread, `miou_search`
    the search protocol's) and latency the isolated one (`latency_ms_search` the in-trial one)."""
    if validation is None or not validation.front:
        numbers = [t.number for t in front_trials(study)]
        return table[table["trial"].isin(numbers)] if len(table) else table
    front = table[table["trial"].isin(validation.front)].copy()
    front["miou_search"], front["latency_ms_search"] = front["miou"], front["latency_ms"]
    front["miou"], front["miou_std"] = front["miou_validated"], front["miou_validated_std"]
    front["latency_ms"] = front["latency_ms_isolated"]
    first = [c for c in FRONT_COLUMNS if c in front]
    return front[first + [c for c in front.columns if c not in first]]


def write_results(run_dir: Path, study: optuna.Study, objectives: Sequence[Objective], scales: dict[str, float],
                  config: dict, how: str = "knee", validation: Validation | None = None) -> pd.DataFrame:
    """Write every output of a run; returns the front table."""
    table = with_target_columns(trials_table(study), study)
    if validation is not None and len(table):
        table = table.merge(validation.table, on="trial", how="left")
    atomic_write(run_dir / "trials.csv", table.to_csv(index=False))
    front = front_table(table, study, validation)
    numbers = [int(n) for n in front["trial"]] if len(front) else []
    atomic_write(run_dir / "pareto.csv", front.to_csv(index=False))
    pareto_dir = run_dir / "pareto"
    pareto_dir.mkdir(exist_ok=True)
    for stale in pareto_dir.glob("*.yaml"):
        if int(stale.stem.split("_")[-1]) not in numbers:
            stale.unlink()
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for n in numbers:
        atomic_write(pareto_dir / f"trial_{n:04d}.yaml", trial_spec(trials[n]).to_yaml())
    values = [[float(row[o.key]) for o in objectives] for _, row in front.iterrows()]
    if numbers:
        atomic_write(run_dir / "best.yaml", trial_spec(trials[numbers[pick(values, objectives, how)]]).to_yaml())
    else:
        (run_dir / "best.yaml").unlink(missing_ok=True)
    atomic_write(run_dir / "config.yaml", yaml.safe_dump({**config, StudyKey.HYPERVOLUME_SCALES: scales}, sort_keys=False))
    history = hypervolume_history(counted_trials(study), objectives, scales)
    final_hv = (hypervolume(losses(v, objectives, scales) for v in values),
                hypervolume(log_losses(v, objectives, scales) for v in values))
    search_label = f"search protocol: {config['height']}x{config['width']}, {config['settings']['epochs']} epochs, 1 seed"
    plots = plot_fronts(run_dir, table, numbers, labelled(objectives, config), search_label,
                        validation.protocol.label() if validation is not None else None)
    plots.append(plot_hypervolume(run_dir, history))
    metrics = insight.run_metrics([o.key for o in objectives], table)
    device = (latency_source(config) or "").split(" (")[0] or None  # "target NAME" with --latency-target
    importance, found = insight.effects(table, metrics, device)
    if len(importance):
        atomic_write(run_dir / "importance.csv", importance.to_csv(index_label="axis"))
    plots += insight.plot_marginals(run_dir, table, metrics, device)
    costs = [o.key for o in objectives if o.direction == "minimize"]
    dominance = preset_dominance(table, validation.margin, costs) if validation is not None and len(table) else None
    if dominance is not None and len(dominance):
        atomic_write(run_dir / "presets.csv", dominance.to_csv(index=False))
    else:
        (run_dir / "presets.csv").unlink(missing_ok=True)
    write_html(run_dir, front, plots, config, history, final_hv, validation, dominance,
               what_mattered_html(importance, found))
    return front


def written_outputs(run_dir: Path) -> list[str]:
    """The outputs the run folder holds, as the closing line names them (patterns for the series).
    write_results removes what a run no longer has (presets.csv, stale front YAMLs), so what is
    there is what the run wrote."""
    names = []
    for pattern in ("trials.csv", "pareto.csv", "pareto/*.yaml", "best.yaml", "presets.csv", "importance.csv",
                    "pareto_*.png", "hypervolume.png", "marginals_*.png", "report.html"):
        if any(run_dir.glob(pattern)):
            names.append(pattern)
    return names


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def validation_summary(validation: Validation) -> list[str]:
    """The run's fidelity in sentences: printed at the end and shown in report.html."""
    v, n = validation, int((validation.table["validated_seeds"] == len(validation.protocol.seeds)).sum())
    return [f"Validated {n} of {len(v.table)} candidates (presets, front, within noise) at {v.protocol.label()}.",
            f"Seed noise: standard deviation of one seed's mIoU {_fmt(v.seed_sd)}, mean gap between two seeds "
            f"{_fmt(v.mean_seed_gap)}; validated means closer than {_fmt(v.margin)} are indistinguishable (about 95 %).",
            f"Fidelity of the search protocol: Kendall tau {_fmt(v.kendall_tau, 2)} between its mIoU and the "
            f"validated mean over these {n} nets."]


def what_mattered_html(importance: pd.DataFrame, found: list[insight.Effect]) -> str:
    """The summary of the largest effects and the importance table, or why there is none."""
    if not len(importance):
        return (f"<p>Too few trials to say (at least {insight.MIN_TRIALS} with the metric are needed).</p>")
    lines = "".join(f"<li>{html.escape(e.sentence())}</li>" for e in found)
    return (f"<ul>{lines}</ul><p>Importance: Optuna's fANOVA, the share of each metric's variance an axis explains "
            f"(costs in log); mIoU from fully trained trials only. Choices seen in fewer than {insight.MIN_GROUP} "
            f"trials are not compared; metrics with fewer than {insight.MIN_TRIALS} trials are not assessed. "
            f"The marginal plots below show each choice's distribution.</p>"
            + importance.to_html(float_format=lambda v: f"{v:.3f}"))


REFERENCE_NOTE = ("<p>Each row's best net is the searched net with the most validated mIoU at &le; the preset's GMACs "
                  "and isolated latency. A preset (or the --baseline net) that breaks your constraints is trained and "
                  "validated all the same, as a yardstick, but never enters the front; its row compares it with the "
                  "best feasible net, whatever that costs (<code>violates</code>: the constraints it breaks).</p>")


def write_html(run_dir: Path, front: pd.DataFrame, plots: list[Path], config: dict, history: list[float],
               final_hv: tuple[float, float], validation: Validation | None, dominance: pd.DataFrame | None,
               mattered: str = "") -> None:
    """report.html: one self-contained page (images inlined)."""
    imgs = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}" alt="{p.name}"/>'
        f"<figcaption>{p.name}</figcaption></figure>" for p in plots
    )
    shown = front.copy()
    validated = validation is not None and bool(validation.front)
    if validated:
        same = indistinguishable(shown, validation.margin)
        shown["indistinguishable in mIoU from"] = [", ".join(map(str, same.get(int(n), []))) for n in shown["trial"]]
    cols = [c for c in (*FRONT_COLUMNS, "indistinguishable in mIoU from") if c in shown]
    front_html = shown[cols].to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}") if len(shown) else "<p>empty</p>"
    if validated:
        fidelity = "".join(f"<p>{html.escape(s)}</p>" for s in validation_summary(validation))
        fidelity += "<h2>Presets against the validated nets</h2>" + (
            dominance.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}") if dominance is not None and len(dominance)
            else "<p>No preset was validated.</p>") + REFERENCE_NOTE
        basis = f"validated values ({html.escape(validation.protocol.label())}; latency measured alone)"
    else:
        fidelity, basis = "<p>Not validated: the front is the search protocol's.</p>", "search-protocol values"
    deploy = html.escape(str(config.get("deploy_size", f"{config['height']}x{config['width']}")))
    source = latency_source(config)
    measured = (f" Latency is measured on the {html.escape(source)} (ONNX Runtime; the search host's figure is "
                "latency_ms_host in trials.csv)." if source else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(config['study'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} figure{{display:inline-block;margin:.5em}}
img{{max-width:580px}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px}}</style></head><body>
<h1>Search {html.escape(config['study'])}</h1>
<p>{len(history)} trials; search-protocol hypervolume {history[-1] if history else 0:.4f}; hypervolume of the
final front {final_hv[0]:.4f} on linear costs, {final_hv[1]:.4f} on log-scaled costs (the scale that values a
ten times cheaper net; see "Which hypervolume" in docs/measurement.md). Every cost is the network's at the deployment size {deploy}, batch 1 (trained at
{config['height']}x{config['width']}); GMACs count one multiply-add as one.{measured}</p>
<h2>Pareto front, from {basis}</h2>{front_html}
<h2>Fidelity</h2>{fidelity}<h2>What mattered</h2>{mattered}<h2>Plots</h2>{imgs}
<h2>Configuration</h2><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre></body></html>"""
    atomic_write(run_dir / "report.html", page)
