"""Search throughput: trials per hour with 1 vs 2 concurrent trials, and the share of wall time
spent outside train/eval/measure (Ray, Optuna, bookkeeping, result files) - split by who spends
it: the driver (Optuna, the sampler, Ray Tune's controller), Ray's daemons, the trial workers'
own overhead, and idle cores (read from /proc, Linux only).

The bound: the same trials run with no search around them, in 1 plain process and then in 2 at
once (each process running every trial), gives the most that 2 concurrent trials can gain over 1
on this machine, whatever the scheduler: two trainings share the memory bandwidth and caches.

    python benchmarks/bench_search.py [--budget 30] [--epochs 2] [--bound-trials 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import sample_specs, save  # noqa: E402
from nas.records import storage_url  # noqa: E402
from nas.search import build_parser, config_from_args, search  # noqa: E402
from nas.study import study_space  # noqa: E402
from nas.trial import TrialSettings, evaluate_trial  # noqa: E402
from trainers.data import load_data  # noqa: E402

CORES = os.cpu_count() or 1


def _trial_phase_seconds(run_dir: Path) -> float:
    """From the first trial's start to the last trial's end, read off the study's timestamps."""
    import optuna
    study = optuna.load_study(study_name=run_dir.name, storage=storage_url(run_dir))
    starts = [t.datetime_start for t in study.trials if t.datetime_start]
    ends = [t.datetime_complete for t in study.trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds()


def _ray_processes() -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds so far) of Ray's processes on this machine."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        if cmd.startswith("ray::"):
            out[int(proc.name)] = ("ray_workers", cpu)
        elif "ray" in cmd and any(d in cmd for d in ("raylet", "gcs_server", "dashboard", "log_monitor", "runtime_env")):
            out[int(proc.name)] = ("ray_daemons", cpu)
    return out


class CpuByRole:
    """CPU seconds spent during a `with` block by this process (the driver) and by Ray's processes,
    by role. Ray's processes are sampled every `every` s while they live: they end with the search,
    and a process that has exited can no longer be read (its last < `every` s are lost; Ray Tune
    reuses its workers for the whole search, so they live until its end)."""

    def __init__(self, every: float = 1.0):
        self.every, self.seen, self._stop, self.own = every, {}, threading.Event(), 0.0
        self.before: dict[int, float] = {}
        self.seconds: dict[str, float] = {}
        self.driver0 = 0.0
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self.before = {pid: cpu for pid, (_, cpu) in _ray_processes().items()}
        self.driver0 = sum(os.times()[:2])
        self.thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(self.every):
            self.seen.update(_ray_processes())
        self.own = time.thread_time()  # the watching itself, not the driver's work

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()
        self.seen.update(_ray_processes())
        self.seconds = {"driver": sum(os.times()[:2]) - self.driver0 - self.own, "ray_daemons": 0.0, "ray_workers": 0.0}
        for pid, (role, cpu) in self.seen.items():
            self.seconds[role] += cpu - self.before.get(pid, 0.0)


def _bare_trials(n: int, epochs: int) -> float:
    """Seconds to run `n` random trials one after another in this process, with nothing else."""
    import torch

    torch.set_num_threads(1)
    data = load_data(None, 32, 64, seed=0)
    settings = TrialSettings(epochs=epochs, threads=1)
    start = time.perf_counter()
    for i, spec in enumerate(sample_specs(study_space(data, 32, 64), n, seed=0)):
        evaluate_trial(spec, data, settings, number=i)
    return time.perf_counter() - start


def bare_concurrency_bound(n: int, epochs: int) -> dict:
    """Throughput of 2 plain processes over 1, each running the same `n` trials: the ceiling."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # fresh interpreters, as the search's workers are
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        one = pool.submit(_bare_trials, n, epochs).result()
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        walls = [f.result() for f in [pool.submit(_bare_trials, n, epochs) for _ in range(2)]]
    return {"bare_trials": n, "bare_1_s": one, "bare_2_s": max(walls), "bare_2_over_1": 2 * one / max(walls)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=int, default=30)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--concurrency", default="1,2")
    p.add_argument("--sampler", default="tpe")
    p.add_argument("--bound-trials", type=int, default=8, help="trials per plain process for the bound (0: skip)")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    for conc in map(int, args.concurrency.split(",")):
        with tempfile.TemporaryDirectory() as out:
            cfg = config_from_args(build_parser().parse_args(
                ["--budget", str(args.budget), "--epochs", str(args.epochs), "--out", out, "--study", f"c{conc}",
                 "--max-concurrent", str(conc), "--no-early-stopping", "--no-validate",
                 "--sampler", args.sampler]))
            cfg = cfg.replace(quiet=True)
            start = time.perf_counter()
            with CpuByRole() as usage:
                search(cfg)
            wall, cpu = time.perf_counter() - start, usage.seconds
            phase = _trial_phase_seconds(Path(out) / f"c{conc}")
            table = pd.read_csv(Path(out) / f"c{conc}" / "trials.csv")
        busy = table["trial_seconds"].sum()
        rows.append({"sampler": args.sampler, "concurrent": conc, "trials": len(table), "wall_s": wall,
                     "trials_per_hour": 3600 * len(table) / wall,
                     "trial_seconds_sum": busy, "outside_share": 1 - busy / (wall * conc),
                     "trial_phase_s": phase, "outside_share_trials": 1 - busy / (phase * conc),
                     # shares of the machine's core-seconds (cores x wall) during the whole command
                     "driver_share": cpu["driver"] / (wall * CORES), "ray_daemon_share": cpu["ray_daemons"] / (wall * CORES),
                     "worker_overhead_share": (cpu["ray_workers"] - busy) / (wall * CORES),
                     "idle_share": 1 - sum(cpu.values()) / (wall * CORES)})
    table = pd.DataFrame(rows)
    if (table["concurrent"] == 1).any():
        table["speedup_over_1"] = table["trials_per_hour"] / table.loc[table["concurrent"] == 1, "trials_per_hour"].iloc[0]
    if args.bound_trials:
        table = table.assign(**bare_concurrency_bound(args.bound_trials, args.epochs))
    save(table, "search_throughput")


if __name__ == "__main__":
    main()
