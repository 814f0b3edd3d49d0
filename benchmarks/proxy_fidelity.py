"""How far a search's mIoU can be trusted: nets of a run retrained under three protocols.

Takes >= 20 nets of a finished run (the presets, the search-protocol front, others evenly across the
mIoU range) and trains each
  - at the search protocol (the run's size and epochs) with seeds 0 (the run's own value) and 1,
  - at the validation protocol (`--val-*`, the search's defaults) with 4 seeds: two independent
    2-seed validations, A = seeds 1000+1001 and B = 1002+1003 (each also evaluated on a 4x larger
    generated validation split, to see whether more validation images cut the noise),
  - at the reference protocol (64x128, 20 epochs) with seeds 0 and 1.
Prints Kendall tau between protocols and seeds, the mean and max seed gaps, and each preset's
margin (best searched net at <= its GMACs, minus the preset) under each protocol. Trainings run two
at a time (one thread each) and every finished one is appended to a CSV at once, so a re-run
resumes where the last stopped.

    python benchmarks/proxy_fidelity.py --run results/example [--nets 20] [--quick]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from itertools import combinations
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, machine, run_logged, save  # noqa: E402
from nas.records import TrialKey, storage_url  # noqa: E402
from search_spaces import ArchSpec  # noqa: E402

BIG_VAL = 256  # validation images of the larger generated split (the default split has 64)


def _spread(trials: list, k: int) -> list:
    """k of the trials evenly spaced in search mIoU."""
    trials = sorted(trials, key=lambda t: t.user_attrs[TrialKey.MIOU])
    if k <= 0 or not trials:
        return []
    return [trials[i] for i in np.unique(np.linspace(0, len(trials) - 1, min(k, len(trials))).round().astype(int))]


def pick_nets(study: optuna.Study, n: int) -> pd.DataFrame:
    """The presets, half the rest from the search-protocol front, the others from the remaining
    trials, each half evenly spaced in search mIoU."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    presets = [t for t in done if t.user_attrs.get(TrialKey.PRESET)]
    front_numbers = {t.number for t in study.best_trials}
    front = _spread([t for t in done if t.number in front_numbers and t not in presets], (n - len(presets)) // 2)
    taken = {t.number for t in presets + front}
    others = _spread([t for t in done if t.number not in taken], n - len(taken))
    return pd.DataFrame([{"trial": t.number, "preset": t.user_attrs.get(TrialKey.PRESET, ""), "gmacs": t.user_attrs[TrialKey.GMACS],
                          "search_seed0": t.user_attrs[TrialKey.MIOU], "spec": t.user_attrs[TrialKey.SPEC]}
                         for t in sorted(presets + front + others, key=lambda t: t.number)])


def train(job: dict) -> dict:
    """One training in a worker process (one thread): mIoU on the default and the large val split."""
    import torch

    from trainers.data import load_data
    from trainers.train import TrainConfig, evaluate, fit

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    h, w = job["height"], job["width"]
    spec = ArchSpec.from_dict(job["spec"]).with_input(height=h, width=w)
    data = load_data(None, h, w, seed=0)
    result = fit(spec, data, TrainConfig(epochs=job["epochs"], seed=job["seed"]))
    row = {k: job[k] for k in ("trial", "protocol", "seed")}
    row.update(miou=result.miou, seconds=result.train_seconds + result.eval_seconds, miou_big_val=np.nan)
    if job["protocol"] == "validation":
        big = load_data(None, h, w, seed=0, n_val=BIG_VAL)
        row["miou_big_val"] = evaluate(result.model, big.val, big.info.num_classes, big.info.ignore_index).miou
    return row


def tau(a, b) -> float:
    from scipy.stats import kendalltau
    return float(kendalltau(a, b).statistic)


def summarise(nets: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fidelity table (all nets and searched nets) and the presets' margins per protocol."""
    m = runs.pivot_table(index="trial", columns=["protocol", "seed"], values="miou")
    vs = sorted(s for p, s in m.columns if p == "validation")
    rs = sorted(s for p, s in m.columns if p == "reference")
    big = runs[runs["protocol"] == "validation"].pivot_table(index="trial", columns="seed", values="miou_big_val")
    m.columns = [f"{p}:{s}" for p, s in m.columns]
    df = nets.set_index("trial").join(m)
    df["search_seed1"] = df["search:1"]
    df["ref0"], df["ref1"] = df[f"reference:{rs[0]}"], df[f"reference:{rs[1]}"]
    df["ref"] = (df["ref0"] + df["ref1"]) / 2
    df["valA"] = df[[f"validation:{s}" for s in vs[:2]]].mean(1)
    df["valB"] = df[[f"validation:{s}" for s in vs[2:4]]].mean(1)
    df["valA_big"], df["valB_big"] = big[vs[:2]].mean(1), big[vs[2:4]].mean(1)
    df["val"] = (df["valA"] + df["valB"]) / 2
    def pair(sub, x, y, how):  # over the nets that have both figures so far
        both = sub[[x, y]].dropna()
        return how(both[x], both[y]) if len(both) > 2 else np.nan

    gap = lambda a, b: (a - b).abs().mean()  # noqa: E731
    worst = lambda a, b: (a - b).abs().max()  # noqa: E731
    rows = []
    for name, sub in (("all nets", df), ("searched nets", df[df["preset"] == ""])):
        row = {"nets": name, "n_search": int(sub["search_seed1"].notna().sum()),
               "n_validation": int(sub[["valA", "valB"]].notna().all(1).sum()), "n_reference": int(sub["ref"].notna().sum())}
        for label, x, y, how in (("tau_ref_seed0_vs_seed1", "ref0", "ref1", tau),
                                 ("tau_search_vs_ref", "search_seed0", "ref", tau),
                                 ("tau_search_seed0_vs_seed1", "search_seed0", "search_seed1", tau),
                                 ("tau_valA_vs_valB", "valA", "valB", tau),
                                 ("tau_valA_vs_valB_big_val", "valA_big", "valB_big", tau),
                                 ("tau_val_vs_ref", "val", "ref", tau),
                                 ("tau_search_vs_val", "search_seed0", "val", tau),
                                 ("ref_seed_gap_mean", "ref0", "ref1", gap), ("ref_seed_gap_max", "ref0", "ref1", worst),
                                 ("search_seed_gap_mean", "search_seed0", "search_seed1", gap),
                                 ("valA_valB_gap_mean", "valA", "valB", gap), ("valA_valB_gap_max", "valA", "valB", worst),
                                 ("valA_valB_gap_mean_big_val", "valA_big", "valB_big", gap)):
            row[label] = pair(sub, x, y, how)
        single = [abs(sub[f"validation:{a}"] - sub[f"validation:{b}"]).mean() for a, b in combinations(vs, 2)]
        row["val_one_seed_gap_mean"] = float(np.mean(single))
        rows.append(row)
    margins = []
    searched = df[df["preset"] == ""]
    for trial, p in df[df["preset"] != ""].iterrows():
        cheaper = searched[searched["gmacs"] <= p["gmacs"]]
        row = {"preset": p["preset"], "gmacs": p["gmacs"]}
        for label, col in (("search", "search_seed0"), ("validation", "val"), ("reference", "ref")):
            best = cheaper[col].max() if len(cheaper) else np.nan
            row[f"{label}_preset"], row[f"{label}_best_cheaper"], row[f"{label}_margin"] = p[col], best, best - p[col]
        margins.append(row)
    return pd.DataFrame(rows), pd.DataFrame(margins)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a finished run folder (with study.db and config.yaml)")
    p.add_argument("--nets", type=int, default=20)
    p.add_argument("--val-size", default="32x64")
    p.add_argument("--val-epochs", type=int, default=10)
    p.add_argument("--ref-size", default="64x128")
    p.add_argument("--ref-epochs", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="6 nets, reference at 32x64 x 4 epochs (development)")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run = Path(args.run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    study = optuna.load_study(study_name=config["study"], storage=storage_url(run))
    if args.quick:
        args.nets, args.ref_size, args.ref_epochs, args.val_epochs = 6, "32x64", 4, 4
    nets = pick_nets(study, args.nets)
    vh, vw = map(int, args.val_size.split("x"))
    rh, rw = map(int, args.ref_size.split("x"))
    plan = [("search", config["height"], config["width"], config["settings"]["epochs"], (1,)),
            ("validation", vh, vw, args.val_epochs, (1000, 1001, 1002, 1003)),
            ("reference", rh, rw, args.ref_epochs, (0, 1))]
    suffix = "_quick" if args.quick else ""
    log = RESULTS / f"proxy_fidelity_runs{suffix}.csv"
    done = pd.read_csv(log) if log.exists() else pd.DataFrame(columns=["trial", "protocol", "seed"])
    have = set(zip(done["trial"], done["protocol"], done["seed"]))
    jobs = [{"trial": int(r.trial), "spec": r.spec, "protocol": name, "height": h, "width": w, "epochs": e, "seed": s,
             "cost": r.gmacs * h * w * e}
            for name, h, w, e, seeds in plan for r in nets.itertuples() for s in seeds
            if (int(r.trial), name, s) not in have]
    # the cheap protocols first (a partial run already answers the repeatability question), then
    # the reference longest first, so the two workers finish together
    jobs.sort(key=lambda j: (j["protocol"] == "reference", -j["cost"]))
    print(f"{len(nets)} nets, {len(jobs)} trainings to run ({len(have)} done before)  [{machine()}]", flush=True)
    run_logged(train, jobs, log, args.workers)
    runs = pd.read_csv(log)
    runs = runs[runs["trial"].isin(nets["trial"])]
    fidelity, margins = summarise(nets, runs)
    print(f"\nprotocols: search {config['height']}x{config['width']} x {config['settings']['epochs']} epochs; "
          f"validation {args.val_size} x {args.val_epochs} epochs; reference {args.ref_size} x {args.ref_epochs} epochs")
    save(fidelity, f"proxy_fidelity{suffix}")
    save(margins, f"proxy_fidelity_margins{suffix}")


if __name__ == "__main__":
    main()
