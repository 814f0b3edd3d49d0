"""The validated final stage's pieces: the front candidates retrained at a reference protocol, several seeds.

A search ranks on a short, single-seed protocol whose mIoU gaps are the size of seed noise. So
after the search, every trial that could be on the front (the front plus every trial within
`noise` mIoU of it) and the four presets are retrained at the validation protocol with several
seeds, and their latency is re-measured alone. The final front comes from these validated values.

Each finished training is stored in the study at once (a study attribute per trial and seed), so
a kill during validation loses no finished training and `--resume` counts none twice. Its trained
weights are kept in the run folder (`weights/`), so `nas.export --trial N` exports a trained net.
The flow that orders these pieces is `nas.validated_stage`.
"""
from __future__ import annotations

import math
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import optuna
import pandas as pd
import torch

from search_spaces import ArchSpec
from trainers.costs import measure_backend_latency
from trainers.data import SegData
from trainers.gpu_share import claim_share, is_fatal_cuda_error, release
from trainers.train import checkpoint_bytes, fit

from .pareto import Objective, crowding_distances, losses, non_domination_ranks, trial_spec
from .records import Status, TrialKey, isolated_key, validated_key
from .trial import TrialSettings

# 2 x the mean |seed 0 - seed 1| mIoU gap of one net at the search protocol (0.015, measured on 19
# nets): a trial within this of the front may be on it after all.
DEFAULT_NOISE = 0.03


@dataclass(frozen=True)
class Protocol:
    """How a validated figure is made: input size, epochs, and the seeds averaged over."""

    height: int
    width: int
    epochs: int
    seeds: tuple[int, ...]

    def label(self) -> str:
        return f"{self.height}x{self.width}, {self.epochs} epochs, {len(self.seeds)} seeds"


@dataclass(frozen=True)
class Job:
    number: int  # the trial
    seed: int
    spec: dict  # the trial's ArchSpec at the protocol's size
    gmacs: float  # for longest-first ordering

    @property
    def key(self) -> str:
        return validated_key(self.number, self.seed)


def infeasible_references(study: optuna.Study) -> list[int]:
    """The references (presets, the --baseline net) that broke a constraint. They are validated all
    the same, as the yardsticks the user asked about, but never enter the front: Optuna holds them
    PRUNED, and no front or domination here counts them."""
    return [t.number for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(TrialKey.PRESET) and t.user_attrs.get(TrialKey.STATUS) == Status.INFEASIBLE
            and TrialKey.SPEC in t.user_attrs and not t.user_attrs.get(TrialKey.INTERRUPTED)]


def candidates(study: optuna.Study, objectives: Sequence[Objective], noise: float, limit: int) -> list[int]:
    """The presets (infeasible ones too), the front, then the trials within `noise` mIoU of the front
    (nearest first), at most `limit` besides the presets.

    A trial is within noise of the front when adding `noise` to its mIoU makes it non-dominated.
    With four objectives the front alone can exceed `limit`: its members go in order of crowding
    distance over the front (each objective's extremes first, then the most isolated), so a capped
    validation still spans the trade-off instead of taking the lowest trial numbers.
    """
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    presets = sorted([t.number for t in done if t.user_attrs.get(TrialKey.PRESET)] + infeasible_references(study))
    if not done:
        return presets
    searched = [i for i, t in enumerate(done) if not t.user_attrs.get(TrialKey.PRESET)]  # indices into done
    rows = np.array([losses(t.values, objectives, {o.key: 1.0 for o in objectives}) for t in done])
    m = [o.name for o in objectives].index("miou")
    slack = []
    for i in searched:
        beaten_by = np.all(rows <= rows[i], axis=1) & np.any(rows < rows[i], axis=1)
        # the mIoU margin by which the nearest dominating trial beats it (0 on the front)
        slack.append(float((rows[i, m] - rows[beaten_by, m]).max()) if beaten_by.any() else 0.0)
    ranks = non_domination_ranks(rows)  # zero slack alone would admit cost-dominated ties
    on_front = [i for i in searched if ranks[i] == 0]
    spread = dict.fromkeys(searched, 0.0)
    if on_front:
        own = rows[on_front]
        lo, span = own.min(axis=0), np.ptp(own, axis=0)
        spread.update(zip(on_front, crowding_distances((own - lo) / np.where(span > 0, span, 1.0))))
    near = sorted((ranks[i] != 0, s, -spread[i], done[i].number) for i, s in zip(searched, slack) if s <= noise)
    return presets + [n for *_, n in near[:limit]]


def pending_jobs(study: optuna.Study, numbers: Sequence[int], protocol: Protocol) -> list[Job]:
    """The (trial, seed) trainings not yet stored in the study, longest (most GMACs) first."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    jobs = []
    for n in numbers:
        spec = trial_spec(trials[n]).with_input(height=protocol.height, width=protocol.width)
        for seed in protocol.seeds:
            job = Job(n, seed, spec.to_dict(), float(trials[n].user_attrs.get(TrialKey.GMACS, 0.0)))
            if job.key not in study.user_attrs:
                jobs.append(job)
    return sorted(jobs, key=lambda j: -j.gmacs)


def weights_path(run_dir: Path, number: int, seed: int) -> Path:
    """Where the validated stage keeps a trial's trained weights for one seed (a nas.train checkpoint)."""
    return Path(run_dir) / "weights" / f"trial_{number:04d}_seed{seed}.pt"


def train_job(job: Job, data: SegData, protocol: Protocol, settings: TrialSettings, reconstruction=None) -> dict:
    """One validation training; a failure is a result with its reason, never an exception. The
    trained weights come back in the result (`checkpoint`, bytes) for the driver to keep, since
    the worker may be on a machine that cannot write the run folder."""
    torch.set_num_threads(settings.threads)
    cfg = settings.train_config(protocol.epochs, job.seed)
    started = time.time()
    try:
        claim_share(settings.target())  # inside: a refusal is this training's failure with its reason
        spec = ArchSpec.from_dict(job.spec)
        # only the final mIoU is kept: nine evaluations of ten would be about 5 % of the training's time
        result = fit(spec, data, cfg, reconstruction=reconstruction, evaluate_every_epoch=False)
        return {"status": Status.COMPLETE, "miou": result.miou, "seconds": result.train_seconds + result.eval_seconds,
                "started_at": started, "finished_at": time.time(), "peak_train_mem_mb": result.peak_train_mem_mb,
                "checkpoint": checkpoint_bytes(result.model, spec, result.metrics)}
    except Exception as exc:
        return {"status": Status.FAILED, "reason": f"{type(exc).__name__}: {exc}", "fatal": is_fatal_cuda_error(exc),
                "traceback": traceback.format_exc(limit=3)}
    finally:
        release(settings.device)


def isolated_latency_pending(study: optuna.Study, numbers: Sequence[int], settings: TrialSettings) -> dict[str, dict]:
    """The candidates whose latency alone is not yet stored: study key -> the spec to time (at the deployment size)."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    return {isolated_key(n): settings.deployed(trial_spec(trials[n])).to_dict()
            for n in numbers if isolated_key(n) not in study.user_attrs}


def measure_isolated_latency(specs: dict[str, dict], settings: TrialSettings) -> dict[str, dict]:
    """Time each spec one after another, with nothing else running (in a task with a trial's resources on a GPU)."""
    torch.set_num_threads(settings.threads)
    out, device = {}, settings.target()
    for key, spec in specs.items():
        lat = measure_backend_latency(ArchSpec.from_dict(spec), device, runs=settings.latency_runs,
                                      threads=settings.threads, backend=settings.latency_backend)
        out[key] = {"latency_ms": lat.median_ms, "latency_iqr_ms": lat.iqr_ms}
    return out


@dataclass(frozen=True)
class Validation:
    """The validated values of a run and what they say about the search protocol's fidelity."""

    protocol: Protocol
    table: pd.DataFrame  # one row per candidate: trial, miou_validated(_std, _seeds), latency_ms_isolated
    front: list[int]  # trials on the front of validated values
    seed_sd: float  # pooled per-net standard deviation of one seed's mIoU
    mean_seed_gap: float  # mean |seed a - seed b| over nets with two or more seeds
    kendall_tau: float  # search-protocol mIoU vs validated mean, over the validated trials
    margin: float  # two validated means closer than this are indistinguishable (about 95 %)


def validated_values(study: optuna.Study, numbers: Sequence[int], protocol: Protocol) -> pd.DataFrame:
    """Per candidate: each seed's mIoU, their mean and standard deviation, the isolated latency."""
    attrs, rows = study.user_attrs, []
    for n in numbers:
        runs = [attrs.get(validated_key(n, s)) for s in protocol.seeds]
        mious = [r["miou"] for r in runs if r and r.get("status") == Status.COMPLETE]
        failed = [r["reason"] for r in runs if r and r.get("status") == Status.FAILED]
        iso = attrs.get(isolated_key(n), {})
        rows.append({"trial": n, "miou_validated": float(np.mean(mious)) if mious else math.nan,
                     "miou_validated_std": float(np.std(mious, ddof=1)) if len(mious) > 1 else math.nan,
                     "miou_validated_seeds": "/".join(f"{m:.4f}" for m in mious), "validated_seeds": len(mious),
                     "validation_failure": failed[0] if failed else "",
                     "latency_ms_isolated": iso.get("latency_ms", math.nan),
                     "latency_iqr_ms_isolated": iso.get("latency_iqr_ms", math.nan)})
    return pd.DataFrame(rows, columns=["trial", "miou_validated", "miou_validated_std", "miou_validated_seeds",
                                       "validated_seeds", "validation_failure", "latency_ms_isolated",
                                       "latency_iqr_ms_isolated"])


def summarise(study: optuna.Study, numbers: Sequence[int], protocol: Protocol,
              objectives: Sequence[Objective]) -> Validation:
    """The validated front (every seed finished and latency re-measured) and the fidelity figures."""
    table = validated_values(study, numbers, protocol)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    full = table[(table["validated_seeds"] == len(protocol.seeds)) & table["latency_ms_isolated"].notna()]
    feasible = full[~full["trial"].isin(infeasible_references(study))]  # a reference out of bounds is no front member
    front: list[int] = []
    if len(feasible):
        values = [validated_objectives(trials[n], row, objectives) for n, row in feasible.set_index("trial").iterrows()]
        ranks = non_domination_ranks(np.array([losses(v, objectives, {o.key: 1.0 for o in objectives}) for v in values]))
        front = sorted(int(n) for n, r in zip(feasible["trial"], ranks) if r == 0)
    seeds = [np.array([float(v) for v in s.split("/")]) for s in full["miou_validated_seeds"]] if len(full) else []
    multi = [s for s in seeds if len(s) > 1]
    seed_sd = float(np.sqrt(np.mean([s.var(ddof=1) for s in multi]))) if multi else math.nan
    gap = float(np.mean([np.abs(s[:, None] - s[None, :])[np.triu_indices(len(s), 1)].mean() for s in multi])) if multi else math.nan
    tau = math.nan
    # an earlier study's infeasible presets were never trained at the search protocol
    trained = full[[TrialKey.MIOU in trials[n].user_attrs for n in full["trial"]]]
    if len(trained) > 2:
        from scipy.stats import kendalltau

        search = [trials[n].user_attrs[TrialKey.MIOU] for n in trained["trial"]]
        tau = float(kendalltau(search, trained["miou_validated"]).statistic)
    margin = 2 * seed_sd * math.sqrt(2 / len(protocol.seeds)) if multi else math.nan
    return Validation(protocol, table, front, seed_sd, gap, tau, margin)


def validated_objectives(trial: optuna.trial.FrozenTrial, row: pd.Series, objectives: Sequence[Objective]) -> list[float]:
    """A trial's objective values with mIoU and latency replaced by their validated figures."""
    replace = {"miou": row["miou_validated"], "latency_ms": row["latency_ms_isolated"]}
    return [float(replace.get(o.key, trial.user_attrs[o.key])) for o in objectives]


def indistinguishable(front: pd.DataFrame, margin: float) -> dict[int, list[int]]:
    """For each front member, the others whose validated mIoU is within `margin` of its own."""
    if not math.isfinite(margin):
        return {}
    rows = list(zip(front["trial"], front["miou_validated"]))
    return {int(a): [int(b) for b, mb in rows if b != a and abs(ma - mb) < margin] for a, ma in rows}


COST_NAMES = {"gmacs": "GMACs", "latency_ms": "latency", "peak_mem_mb": "memory", "params": "parameters"}


def preset_dominance(table: pd.DataFrame, margin: float, costs: Sequence[str] = ("gmacs", "latency_ms")) -> pd.DataFrame:
    """For each validated preset (and the --baseline net), the validated searched net that beats it by
    the most mIoU at <= its GMACs and <= its isolated latency, and whether that margin exceeds the noise
    `margin`. A preset that broke a constraint (state infeasible) is compared instead with the best
    feasible net, the searched net with the most validated mIoU, on mIoU and on each of `costs`."""
    done = table[table["miou_validated"].notna() & table["latency_ms_isolated"].notna()]
    is_preset = done["preset"].fillna("") != ""
    searched = done[~is_preset & (done["state"] == Status.COMPLETE)] if "state" in done else done[~is_preset]
    rows = []
    for _, p in done[is_preset].iterrows():
        infeasible = p.get("state") == Status.INFEASIBLE
        cheaper = searched if infeasible else searched[(searched["gmacs"] <= p["gmacs"])
                                                       & (searched["latency_ms_isolated"] <= p["latency_ms_isolated"])]
        best = cheaper.loc[cheaper["miou_validated"].idxmax()] if len(cheaper) else None
        gain = float(best["miou_validated"] - p["miou_validated"]) if best is not None else math.nan
        if infeasible:
            verdict = infeasible_verdict(p, best, gain, margin, costs)
        else:
            verdict = ("no cheaper net validated" if best is None else "not dominated" if gain < 0 else
                       "dominated" if gain > margin else "dominated within noise")
        rows.append({"preset": p["preset"], "miou": p["miou_validated"], "miou_std": p["miou_validated_std"],
                     "gmacs": p["gmacs"], "latency_ms": p["latency_ms_isolated"],
                     "by_trial": int(best["trial"]) if best is not None else None,
                     "by_miou": best["miou_validated"] if best is not None else math.nan,
                     "by_miou_std": best["miou_validated_std"] if best is not None else math.nan,
                     "by_gmacs": best["gmacs"] if best is not None else math.nan,
                     "by_latency_ms": best["latency_ms_isolated"] if best is not None else math.nan,
                     "gain": gain, "verdict": verdict,
                     "violates": p.get("reason", "") if infeasible else ""})
    return pd.DataFrame(rows)


def infeasible_verdict(preset: pd.Series, best: pd.Series | None, gain: float, margin: float,
                       costs: Sequence[str]) -> str:
    """What the best feasible net is worth against a preset outside the constraints: the mIoU gap
    (against the noise `margin`) and its share of each of the preset's `costs`."""
    said = "infeasible under your constraints; best feasible net vs it: "
    if best is None:
        return said + "no feasible net validated"
    if not math.isfinite(margin):
        noise = ""
    else:
        noise = ", within noise" if abs(gain) <= margin else ", better beyond noise" if gain > 0 else ", worse beyond noise"
    iso = {"latency_ms": "latency_ms_isolated"}
    shares = []
    for key in costs:
        own, theirs = float(best[iso.get(key, key)]), float(preset[iso.get(key, key)])
        if theirs > 0 and math.isfinite(own):
            pct = 100 * own / theirs
            shares.append(f"{pct:.0f} %" if pct >= 10 else f"{pct:.2g} %")
            shares[-1] += f" of its {COST_NAMES.get(key, key)}"
    return (said + f"trial {int(best['trial'])}, mIoU {best['miou_validated']:.3f} vs {preset['miou_validated']:.3f} "
            f"({gain:+.3f}{noise})" + (" at " + ", ".join(shares) if shares else ""))
