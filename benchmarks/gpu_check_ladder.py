"""The resolution ladder's top rungs on a GPU: a section of the one-shot GPU check (benchmarks/gpu_check.py).

The CPU ladder (benchmarks/scale_ladder.py) trains up to 128x256; a GPU reaches the sizes users
deploy at. This section trains the ladder's presets and front nets with the ladder's recipe (10
epochs of the 256 embedded scenes rendered at the rung's size, batch 16, seeds 1000 and 1001,
precision `auto`) at 256x512 and then 512x1024, four trainings at a time on the card, each capped at
a quarter of its memory. The order gives answers soonest: every net at 256x512 with one seed, then
at 512x1024, then the second seeds. A training that would overrun the section's budget is not
started, and the ones still running at its end are stopped: the rows say what finished.

Each rung's figures are those of the ladder's report (benchmarks/scale_ladder_report.py): Kendall's
tau of mIoU against the CPU ladder's 128x256 and 32x64, both with the ladder's own 10-epoch recipe
(results/bench/scale_ladder.csv), and each preset's verdict at the rung's costs
(results/bench/scale_ladder_costs.csv), over the nets that finished. A planned rung where no training
finished is an error row, so a check too short to reach 512x1024 says so.
"""
from __future__ import annotations

import multiprocessing
import time

import pandas as pd

from benchmarks.gpu_check_report import Outcome
from benchmarks.scale_ladder import COSTS, EPOCHS, LOG, SEEDS, LadderNet, at_size, ladder_nets
from benchmarks.scale_ladder_report import REF, rung_means, tau_with_interval, verdicts

GPU_RUNGS = ((256, 512), (512, 1024))
DRY_RUNGS = ((32, 64), (64, 128))  # a CPU dry run: every code path at sizes the CPU ladder also has
WORKERS = 4
GROUPS = ("preset", "front")
SMALL = (64, 16)  # a dry run's train / val images: it checks the path, not the figures


def top_rung_nets() -> list[LadderNet]:
    return [n for n in ladder_nets() if n.group in GROUPS]


def rung_jobs(nets: list[LadderNet], rungs, seeds=SEEDS) -> list[dict]:
    """Every net at the first rung with the first seed, then the next rung, then the next seeds."""
    return [{"net": n.name, "group": n.group, "spec": n.spec, "height": h, "width": w, "seed": s}
            for s in seeds for h, w in rungs for n in nets]


def train_at_rung(job: dict) -> dict:
    """One training in a pool worker (spawned: CUDA needs it), on its quarter of the card."""
    import warnings

    import torch

    from nas.trial import TrialSettings
    from trainers.data import load_data
    from trainers.gpu_share import claim_share
    from trainers.train import fit

    warnings.simplefilter("ignore")
    settings = TrialSettings(device=job["device"], gpu_share=job["share"], threads=job["threads"])
    claim_share(settings.target())
    torch.set_num_threads(job["threads"])
    h, w = job["height"], job["width"]
    data = load_data(None, h, w, seed=0, **job["images"])
    spec = at_size(LadderNet(job["net"], job["group"], job["spec"]), h, w)
    t = time.perf_counter()
    result = fit(spec, data, settings.train_config(job["epochs"], job["seed"]))
    return {"net": job["net"], "group": job["group"], "rung": f"{h}x{w}", "seed": job["seed"],
            "epochs": job["epochs"], "precision": result.precision, "device": job["device"], "miou": result.miou,
            "miou_by_epoch": "/".join(f"{r.miou:.4f}" for r in result.history),
            "train_s": round(result.train_seconds, 1), "wall_s": round(time.perf_counter() - t, 1),
            "peak_train_mem_mb": result.peak_train_mem_mb}


def _estimate(job: dict, rows: list[dict], rungs) -> float:
    """Seconds the job will take: the longest finished training at its rung, else the previous
    rung's scaled by the pixels (0 where nothing finished: the first wave always starts)."""
    def longest(h: int, w: int) -> float:
        return max((r["wall_s"] for r in rows if r.get("rung") == f"{h}x{w}" and "wall_s" in r), default=0.0)
    h, w = job["height"], job["width"]
    own = longest(h, w)
    if own:
        return own
    before = [(a, b) for a, b in rungs if a * b < h * w]
    return longest(*before[-1]) * h * w / (before[-1][0] * before[-1][1]) if before else 0.0


def run_rungs(ck, jobs: list[dict], rungs, budget: float) -> tuple[list[dict], int]:
    """Run the jobs four at a time until the budget; rows of the finished ones (errors as rows), and
    how many were not started or were stopped."""
    start, rows, running = time.time(), [], {}
    pending = list(jobs)
    with multiprocessing.get_context("spawn").Pool(WORKERS) as pool:
        while pending or running:
            while len(running) < WORKERS:  # the first job that still fits: a long 512x1024 one blocks no short one
                job = next((j for j in pending if time.time() - start + _estimate(j, rows, rungs) <= budget), None)
                if job is None:
                    break
                pending.remove(job)
                running[pool.apply_async(train_at_rung, (job,))] = job
            if not running:
                break  # nothing fits in what is left
            time.sleep(0.5)
            for res in [r for r in running if r.ready()]:
                job = running.pop(res)
                try:
                    row = res.get()
                except Exception as exc:  # an out-of-memory at 512x1024 is a row, not a lost section
                    first = (str(exc).strip().splitlines() or [""])[0]  # CUDA's messages run to several lines
                    row = {k: job[k] for k in ("net", "group", "seed")} | {
                        "rung": f"{job['height']}x{job['width']}", "error": f"{type(exc).__name__}: {first}"}
                rows.append(row)
                print(f"  {row['rung']} {row['net']} seed {row['seed']}: " +
                      (f"mIoU {row['miou']:.3f} in {row['wall_s']:.0f} s" if "miou" in row else row["error"]),
                      flush=True)
                ck.write("ladder", rows, quiet=True)  # a cut-short check keeps the finished ones
            if time.time() - start > budget:
                break  # the `with` terminates the trainings still running
    return rows, len(pending) + len(running)


def rung_summary(rows: list[dict], nets: list[LadderNet]) -> list[dict]:
    """Per rung trained here: nets finished, tau against the CPU ladder's 128x256 and 32x64, preset verdicts."""
    done = pd.DataFrame([r for r in rows if "miou" in r])
    if done.empty:
        return []
    cpu = pd.read_csv(LOG)
    # the CPU ladder's own recipe: its 10 epochs (shorter ones sit beside them at 32x64) in the precision
    # its reference rung was trained in
    cpu = cpu[cpu["epochs"] == EPOCHS]
    cpu = cpu[cpu["precision"] == cpu.loc[cpu["rung"] == REF, "precision"].mode().iloc[0]]
    cpu_means = rung_means(cpu).pivot(index="net", columns="rung", values="miou")
    means = rung_means(done)
    groups = {n.name: n.group for n in nets}
    found = verdicts(means, pd.read_csv(COSTS), groups)
    out = []
    for rung, at in means.groupby("rung"):
        row = {"rung": rung, "nets": len(at), "seeds": int(at["seeds"].min())}
        for other in (REF, "32x64"):
            both = at.set_index("net")["miou"].to_frame("here").join(cpu_means[other]).dropna()
            if len(both) >= 4:
                tau, lo, hi = tau_with_interval(both["here"], both[other])
                row.update({f"tau_vs_{other}": tau, f"tau_vs_{other}_ci": f"[{lo:.2f}, {hi:.2f}]"})
        mine = found[found["rung"] == rung] if len(found) else found  # no preset finished: no verdicts
        row["verdicts"] = "; ".join(f"{v.preset} {v.verdict}" for v in mine.itertuples())
        out.append(row)
    return out


def ladder(ck, budget: float) -> Outcome:
    from trainers.data import load_data

    dry = ck.dry
    rungs = DRY_RUNGS if dry else GPU_RUNGS
    nets = top_rung_nets()
    images = dict(zip(("n_train", "n_val"), SMALL)) if dry else {}
    t = time.time()
    for h, w in rungs:  # rendered once into the cache here, not by four workers at once
        load_data(None, h, w, seed=0, **images)
    print(f"  rendered the scenes at {', '.join(f'{h}x{w}' for h, w in rungs)} in {time.time() - t:.0f} s")
    threads = max(1, int(ck.cpus_per_trial))
    common = {"device": ck.device, "share": 1 / WORKERS if ck.cuda else 0.0, "threads": threads,
              "epochs": 1 if dry else EPOCHS, "images": images}
    jobs = [j | common for j in rung_jobs(nets, rungs, SEEDS[:1] if dry else SEEDS)]
    rows, left = run_rungs(ck, jobs, rungs, budget - (time.time() - t))
    for h, w in rungs:
        if not any(r.get("rung") == f"{h}x{w}" and "miou" in r for r in rows):
            rows.append({"rung": f"{h}x{w}", "error": f"no training finished at {h}x{w} within the section's "
                                                      f"{budget:.0f} s"})
    ck.write("ladder", rows)
    summary = rung_summary(rows, nets)
    ck.write("ladder_summary", summary)
    figures = {"trainings": sum("miou" in r for r in rows), "not_finished": left,
               **{f"{s['rung']}_{k}": s[k] for s in summary for k in ("nets", f"tau_vs_{REF}", "verdicts") if k in s}}
    return Outcome(rows, figures=figures)
