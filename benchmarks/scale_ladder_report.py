"""The resolution ladder's findings, from what benchmarks/scale_ladder.py has trained so far.

- Kendall's tau of validated mIoU (mean over the seeds trained) between each rung and 128x256, with
  a 95 % bootstrap interval over nets;
- each preset's verdict at each rung (nas.validate.preset_dominance: the validated net with the most
  mIoU at <= the preset's GMACs and latency, at that rung's size, against the noise margin);
- each seed axis's effect (the base net's one-axis variants) at each rung;
- whether the trainings had flattened (the mIoU gained over the last two epochs);
- how well the latency ranking at each size agrees with 512x1024's;
- shorter recipes at a rung (`scale_ladder.py --epochs N`): their tau and verdicts against the
  10-epoch 128x256, as a protocol that validates for fewer epochs would get them.

    python benchmarks/scale_ladder_report.py   # -> results/bench/scale_ladder_*.csv, nas/ladder_agreement.csv

The agreement of each validation size with 128x256 is also written into the package
(nas/ladder_agreement.csv), where every run's report reads the figure for its own protocol.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import save  # noqa: E402
from benchmarks.scale_ladder import AXIS_BASE, COSTS, EPOCHS, LOG, REFERENCE, ladder_nets  # noqa: E402
from nas.validate import DEFAULT_NOISE, preset_dominance  # noqa: E402
from trainers.train import resolve_precision  # noqa: E402

AGREEMENT = Path(__file__).resolve().parent.parent / "nas" / "ladder_agreement.csv"
REF = f"{REFERENCE[0]}x{REFERENCE[1]}"


def tau_with_interval(a: pd.Series, b: pd.Series, draws: int = 2000) -> tuple[float, float, float]:
    """Kendall's tau of two rankings of the same nets, and a 95 % bootstrap interval over nets."""
    a, b = a.to_numpy(), b.to_numpy()
    rng = np.random.default_rng(0)
    boot = [kendalltau(a[i], b[i]).statistic for i in (rng.integers(0, len(a), len(a)) for _ in range(draws))]
    return float(kendalltau(a, b).statistic), *map(float, np.nanpercentile(boot, [2.5, 97.5]))


def rung_means(runs: pd.DataFrame) -> pd.DataFrame:
    g = runs.groupby(["net", "rung"])["miou"]
    return pd.DataFrame({"miou": g.mean(), "miou_std": g.std(ddof=1), "seeds": g.size()}).reset_index()


def rank_agreement(means: pd.DataFrame, groups: dict[str, str]) -> pd.DataFrame:
    """tau of each rung against the reference, over the nets trained at both (all, and without the axis variants)."""
    wide = means.pivot(index="net", columns="rung", values="miou")
    rows = []
    for rung in wide.columns:
        for scope, keep in (("all nets", lambda n: True), ("validated stage", lambda n: groups[n] != "axis")):
            both = wide[[rung, REF]].dropna() if REF in wide else pd.DataFrame()
            both = both[[keep(n) for n in both.index]]
            if len(both) < 4:
                continue
            tau, lo, hi = tau_with_interval(both[rung], both[REF])
            rows.append({"rung": rung, "scope": scope, "nets": len(both), "tau_vs_" + REF: tau, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def verdicts(means: pd.DataFrame, costs: pd.DataFrame, groups: dict[str, str]) -> pd.DataFrame:
    """Each preset's verdict at each rung against the validated stage's other nets (axis variants left out)."""
    rows = []
    for rung, at in means.groupby("rung"):
        at = at[at["net"].map(groups) != "axis"].merge(costs[costs["rung"] == rung], on="net")
        if at.empty:
            continue
        table = pd.DataFrame({"trial": range(len(at)), "preset": at["net"].where(at["net"].map(groups) == "preset", ""),
                              "state": "complete", "miou_validated": at["miou"], "miou_validated_std": at["miou_std"],
                              "gmacs": at["gmacs"], "latency_ms_isolated": at["latency_ms"]})
        names = dict(enumerate(at["net"]))
        for _, v in preset_dominance(table, DEFAULT_NOISE).iterrows():
            rows.append({"rung": rung, "preset": v["preset"], "miou": v["miou"], "verdict": v["verdict"],
                         "by": names.get(v["by_trial"], "") if pd.notna(v["by_trial"]) else "", "gain": v["gain"],
                         "nets": len(at)})
    return pd.DataFrame(rows)


def axis_effects(means: pd.DataFrame, nets) -> pd.DataFrame:
    """mIoU of each one-axis variant minus its base net's, at each rung."""
    base = f"trial_{AXIS_BASE:04d}"
    wide = means.pivot(index="net", columns="rung", values="miou")
    rows = [{"variant": n.name, "change": n.axis, **{r: wide.at[n.name, r] - wide.at[base, r] for r in wide.columns
                                                      if n.name in wide.index and base in wide.index}}
            for n in nets if n.group == "axis"]
    return pd.DataFrame(rows)


def flattening(runs: pd.DataFrame) -> pd.DataFrame:
    """Per rung: the mIoU gained over the last two epochs (epoch 8 -> 10), mean and largest over runs."""
    last = runs["miou_by_epoch"].str.split("/").map(lambda e: float(e[-1]) - float(e[-3]))
    g = last.groupby(runs["rung"])
    return pd.DataFrame({"rung": g.mean().index, "runs": g.size().to_numpy(), "gain_last_2_epochs": g.mean().to_numpy(),
                         "largest_gain": g.max().to_numpy()})


def latency_agreement(costs: pd.DataFrame) -> pd.DataFrame:
    wide = costs.pivot(index="net", columns="rung", values="latency_ms")
    top = "512x1024"
    rows = []
    for rung in wide.columns:
        tau, lo, hi = tau_with_interval(wide[rung], wide[top])
        rows.append({"rung": rung, "nets": len(wide), "latency_tau_vs_" + top: tau, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def main() -> None:
    nets = ladder_nets()
    groups = {n.name: n.group for n in nets}
    runs = pd.read_csv(LOG)
    precision = resolve_precision("auto", "cpu")  # the ladder's own trainings (cpu_precision.py adds bf16 ones)
    runs = runs[runs["precision"] == precision]
    shorter = runs[runs["epochs"] != EPOCHS]
    runs = runs[runs["epochs"] == EPOCHS]  # the ladder's own recipe; shorter ones are judged against it below
    means = rung_means(runs)
    print(f"{len(runs)} trainings in {precision}: " + ", ".join(f"{r} {n}" for r, n in runs.groupby("rung").size().items()))
    agree = rank_agreement(means, groups)
    save(agree, "scale_ladder_tau")
    save(flattening(runs), "scale_ladder_flattening")
    save(axis_effects(means, nets), "scale_ladder_axes")
    if COSTS.exists():
        costs = pd.read_csv(COSTS)
        found = verdicts(means, costs, groups)
        save(found, "scale_ladder_verdicts")
        save(latency_agreement(costs), "scale_ladder_latency_tau")
        wide = found.pivot(index="preset", columns="rung", values="verdict")  # presets x rungs
        same = {r: int((wide[r] == wide[REF]).sum()) for r in wide.columns} if REF in wide else {}
    else:
        same = {}
    if agree.empty:
        print(f"no net trained at {REF} yet: no agreement to write")
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    ours = agree[agree["scope"] == "validated stage"].assign(
        epochs=EPOCHS, verdicts_same=lambda t: t["rung"].map(same),
        seeds=lambda t: t["rung"].map(means.groupby("rung")["seeds"].min()), commit=commit)
    recipes = shorter_recipes(shorter, means, costs if COSTS.exists() else None, groups)
    if not recipes.empty:
        save(recipes, "scale_ladder_epochs")
        ours = pd.concat([ours, recipes.assign(commit=commit)[ours.columns]], ignore_index=True)
    ours.rename(columns={"tau_vs_" + REF: "tau"}).to_csv(AGREEMENT, index=False)
    print(f"wrote {AGREEMENT}")


def shorter_recipes(shorter: pd.DataFrame, means: pd.DataFrame, costs: pd.DataFrame | None,
                    groups: dict[str, str]) -> pd.DataFrame:
    """Each (rung, epochs) trained shorter than the ladder's recipe: tau of its validated-stage
    ranking against the 10-epoch 128x256, and how many preset verdicts match 128x256's."""
    rows = []
    reference = means[means["rung"] == REF]
    for (rung, epochs), runs in shorter.groupby(["rung", "epochs"]):
        mine = rung_means(runs).assign(rung=f"{rung}@{epochs}")  # a rung label of its own beside the reference
        agree = rank_agreement(pd.concat([mine, reference]), groups)
        agree = agree[(agree["scope"] == "validated stage") & (agree["rung"] == f"{rung}@{epochs}")]
        if agree.empty:
            continue
        same = None
        if costs is not None:
            at = costs[costs["rung"].isin([rung, REF])].assign(rung=lambda t: t["rung"].replace(rung, f"{rung}@{epochs}"))
            found = verdicts(pd.concat([mine, reference]), at, groups).pivot(index="preset", columns="rung", values="verdict")
            same = int((found[f"{rung}@{epochs}"] == found[REF]).sum())
        rows.append({**agree.iloc[0].to_dict(), "rung": rung, "epochs": int(epochs), "verdicts_same": same,
                     "seeds": int(mine["seeds"].min())})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
