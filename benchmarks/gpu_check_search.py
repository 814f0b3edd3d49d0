"""The search part of the GPU check (benchmarks/gpu_check.py): run `nas.search` as users do, then read
its throughput, concurrency, GPU utilisation, training memory and latency spread off its study.

Concurrency is read from the trials' training windows (each trial's training ends at `finished_at`
and lasted `train_seconds`), not from Optuna's ask-to-tell times, which include the latency timing
and the wait for the driver. nvidia-smi's utilisation says only that some kernel ran in each sample
window, so power draw and SM clock are sampled beside it.

The study is read straight from its SQLite file with the standard library, so the figures come
back even when the search was stopped by its time budget or the driver's Optuna cannot be imported.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.gpu_check_report import attempt  # noqa: E402
from nas.records import StudyKey  # noqa: E402  (standard library only: no Optuna needed)

REPO = Path(__file__).resolve().parent.parent
STUDY = "gpu_check"
FINISHED = ("COMPLETE", "PRUNED")  # trained to the end, or stopped early by the scheduler: both used budget
# Stands in for nvidia-smi in a dry run, so that the sampling and parsing code runs too.
FAKE_SMI = "import time\nwhile True:\n    print('50, 1000, 150.5, 1755', flush=True)\n    time.sleep(0.5)"
FIELDS = ("util_pct", "mem_mib", "power_w", "sm_clock_mhz")
LOG_TAIL = 60  # lines kept of each worker's stderr
MAX_LOGS = 40  # files kept of each kind (Tune's error files, workers' stderr)


class GpuSampler:
    """Samples GPU utilisation (%), memory used (MiB), power (W) and SM clock (MHz) every 500 ms from
    nvidia-smi, in a thread."""

    def __init__(self, fake: bool = False):
        self.samples: list[tuple[float, ...]] = []  # (time, *FIELDS)
        self.fake, self.error, self.proc = fake, None, None
        cmd = ([sys.executable, "-u", "-c", FAKE_SMI] if fake else
               ["nvidia-smi", "-i", "0", "--query-gpu=utilization.gpu,memory.used,power.draw,clocks.sm",
                "--format=csv,noheader,nounits",
                "-lms", "500"])
        try:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as exc:  # no nvidia-smi: the run goes on without utilisation figures
            self.error = f"{cmd[0]}: {exc}"
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                values = tuple(float(v) for v in line.split(",")[:len(FIELDS)])
            except ValueError:  # "[N/A]" or a header line
                continue
            if len(values) == len(FIELDS):
                self.samples.append((time.time(), *values))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)

    def summary(self, t0: float, t1: float) -> dict:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if not inside:
            return {"gpu_util_source": self.error or "no samples in the trial phase"}
        util, power, clock = ([s[1 + FIELDS.index(f)] for s in inside] for f in ("util_pct", "power_w", "sm_clock_mhz"))
        return {"gpu_util_source": "fake (dry run)" if self.fake else "nvidia-smi every 500 ms",
                "gpu_util_samples": len(util), "gpu_util_mean_pct": statistics.fmean(util),
                "gpu_util_median_pct": statistics.median(util), "gpu_util_p10_pct": _quantile(util, 0.1),
                "gpu_util_p90_pct": _quantile(util, 0.9), "gpu_mem_used_max_mib": max(s[2] for s in inside),
                "power_w_mean": statistics.fmean(power), "power_w_max": max(power),
                "sm_clock_mhz_mean": statistics.fmean(clock), "sm_clock_mhz_min": min(clock)}


def _quantile(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def run_search(work: Path, out: Path, args: list[str], budget_s: float) -> dict:
    """Run the search until it ends or `budget_s` has passed, then stop it with Ctrl-C's signal, so
    it writes its results; returns how it ended. (Not SIGTERM: once Ray is up in the driver, its
    failure-signal handler takes SIGTERM and aborts the process.)"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "LIGHTSEG_RAY_TMP": str(work / "ray")}  # private, and short: Ray's socket paths have a limit
    cmd = [sys.executable, "-m", "nas.search", *args, "--study", STUDY, "--out", str(work), "--force"]
    print("$", " ".join(cmd[1:]), flush=True)
    grace = min(40.0, budget_s / 4)  # for the stop: trials cancelled, results written, Ray shut down
    start = time.time()
    with open(out / "search.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        how = "finished"
        try:
            while proc.poll() is None and time.time() - start < budget_s - grace:
                time.sleep(0.5)
            if proc.poll() is None:
                how = "stopped at its time budget"
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(grace)
                except subprocess.TimeoutExpired:
                    how = "killed after its time budget"
        finally:  # also when this check itself is interrupted: never leave a search (and its Ray) behind
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    run_dir = work / STUDY
    for name in ("trials.csv", "study.db"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, out / f"search_{name}")
    return {"search_exit": proc.returncode, "search_end": how, "search_wall_s": time.time() - start}


def _when(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None  # local time, as Optuna writes it


def read_trials(db: Path) -> tuple[list[dict], dict]:
    """Every trial of the study (state, start, end, user attributes) and the study's attributes."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
                           "ORDER BY number").fetchall()
        attrs: dict[int, dict] = {}
        for tid, key, value in con.execute("SELECT trial_id, key, value_json FROM trial_user_attributes"):
            attrs.setdefault(tid, {})[key] = json.loads(value)
        study_attrs = {k: json.loads(v) for k, v in con.execute("SELECT key, value_json FROM study_user_attributes")}
    finally:
        con.close()
    trials = [{"number": n, "state": str(state).split(".")[-1], "start": _when(s), "end": _when(e),
               **attrs.get(tid, {})} for tid, n, state, s, e in rows]
    return trials, study_attrs


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one moment (an end and a start at the same instant do not overlap)."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def training_window(t: dict) -> tuple[float, float] | None:
    """When the trial trained (and evaluated): its recorded end less its training seconds."""
    end, seconds = t.get("finished_at"), t.get("train_seconds")
    if isinstance(end, (int, float)) and isinstance(seconds, (int, float)):
        return end - seconds, end
    return None


def _error(t: dict) -> str:
    """A trial that ended in an error: its row is an error row (the section is then degraded)."""
    if t["state"] == "FAIL" or str(t.get("status", "")).lower() in ("failed", "error"):
        return str(t.get("reason") or t["state"])[:200]
    return ""


def summarise(trials: list[dict], stop_time: float, concurrent: int, sampler: GpuSampler) -> tuple[dict, list[dict]]:
    """Throughput, concurrency, utilisation and memory over the trial phase; one row per trial."""
    started = [t for t in trials if t["start"] is not None]
    done = [t for t in started if t["state"] in FINISHED and t["end"] is not None]
    windows = [w for w in map(training_window, started) if w is not None]
    summary: dict = {"trials_started": len(started), "trials_finished": len(done),
                     "states": {s: sum(t["state"] == s for t in trials) for s in {t["state"] for t in trials}},
                     "statuses": {s: sum(t.get("status") == s for t in trials) for s in {t.get("status") for t in trials}}}
    if done:
        t0, t1 = min(t["start"] for t in started), max(t["end"] for t in done)
        ends = sorted(t["end"] for t in done)
        summary.update(trial_phase_s=t1 - t0, trials_per_hour=len(done) / max(t1 - t0, 1e-9) * 3600)
        if len(ends) >= 2 * concurrent:  # from the first finish on, without the first wave's ramp-up
            summary["trials_per_hour_steady"] = (len(ends) - 1) / max(ends[-1] - ends[0], 1e-9) * 3600
        summary.update(sampler.summary(t0, t1))
    summary["training_windows"] = len(windows)
    summary["max_concurrent_training"] = max_overlap(windows) if windows else 0
    # ask-to-tell spans latency timing and the driver's bookkeeping too: shown, never judged on
    asked = [(t["start"], t["end"] or stop_time) for t in started]
    summary["max_concurrent_ask_to_tell"] = max_overlap(asked) if asked else 0
    summary["overlap_ok"] = summary["max_concurrent_training"] >= concurrent
    rows = []
    for t in started:
        spec = t.get("spec") or {}
        row = {"trial": t["number"], "state": t["state"], "status": t.get("status", ""),
               "preset": t.get("preset", ""), "seconds": (t["end"] or stop_time) - t["start"],
               "train_seconds": t.get("train_seconds"), "epochs": t.get("epochs"), "miou": t.get("miou"),
               "latency_ms": t.get("latency_ms"), "gmacs": t.get("gmacs"), "peak_mem_mb": t.get("peak_mem_mb"),
               "peak_train_mem_mb": t.get("peak_train_mem_mb"),  # fit's: without the resident split
               "precision": t.get("precision", ""), "skipped_steps": t.get("skipped_steps", ""),
               "decoder": (spec.get("decoder") or {}).get("kind", ""), "tvconv_from": spec.get("tvconv_from", ""),
               "reason": str(t.get("reason", ""))[:120]}
        if _error(t):
            row["error"] = _error(t)
        rows.append(row)
    peaks = [r["peak_train_mem_mb"] for r in rows if isinstance(r["peak_train_mem_mb"], (int, float))]
    summary["peak_train_mem_mb"] = ({"recorded": len(peaks), "max": max(peaks), "median": statistics.median(peaks)}
                                    if peaks else "not recorded")
    return summary, rows


def keep_logs(work: Path, out: Path) -> None:
    """Copy Tune's error files and the tails of the Ray workers' stderr out of the work folder, which
    is deleted at the end: a failed trial's cause must come back with the figures."""
    errors = sorted(work.rglob("error.txt"), key=lambda p: p.stat().st_mtime)[-MAX_LOGS:]
    for i, path in enumerate(errors):
        (out / "tune_errors").mkdir(exist_ok=True)
        shutil.copy(path, out / "tune_errors" / f"{i:02d}_{path.parent.name[:60]}.txt")
    logs = [p for p in (work / "ray").rglob("logs/*.err") if p.stat().st_size > 0]
    for path in sorted(logs, key=lambda p: p.stat().st_size)[-MAX_LOGS:]:
        (out / "worker_stderr").mkdir(exist_ok=True)
        lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL:]
        (out / "worker_stderr" / f"{path.parent.parent.name[:40]}_{path.name}.txt").write_text("\n".join(lines) + "\n")


def latency_settings(study_attrs: dict) -> tuple[str, int, tuple[int, int] | None]:
    """The in-search latency's backend, threads and input size, from the study's recorded meaning
    ("latency": "torch, 4 thread(s), median of 30 runs"; "deploy size": "256x512")."""
    meaning = study_attrs.get(StudyKey.TRIAL_MEANING) or {}
    parts = [p.strip() for p in str(meaning.get("latency", "torch, 1 thread(s)")).split(",")]
    backend = parts[0] if parts[0] in ("torch", "onnxruntime") else "torch"
    threads = int(parts[1].split()[0]) if len(parts) > 1 and parts[1].split()[0].isdigit() else 1
    size = meaning.get("deploy size")
    hw = tuple(int(v) for v in size.split("x")) if isinstance(size, str) and "x" in size else None
    return backend, threads, hw


def isolated_latency(trials: list[dict], study_attrs: dict, device: str, budget_s: float, runs: int) -> list[dict]:
    """Each finished trial's net timed again alone, one at a time, with the search's backend."""
    from benchmarks.gpu_smoke_timing import fp32_label
    from search_spaces import ArchSpec
    from trainers.costs import measure_costs

    backend, threads, hw = latency_settings(study_attrs)
    start, rows = time.time(), []
    for t in trials:
        if t["state"] not in FINISHED or "spec" not in t or t.get("latency_ms") is None:
            continue
        if time.time() - start > budget_s:
            print(f"  latency: time budget spent after {len(rows)} nets")
            break

        def again(t=t) -> dict:
            spec = ArchSpec.from_dict(t["spec"])
            if hw is not None:
                spec = spec.with_input(height=hw[0], width=hw[1])
            costs = measure_costs(spec, device, runs=runs, threads=threads, backend=backend)
            return {"isolated_ms": costs.latency_ms, "ratio": t["latency_ms"] / costs.latency_ms,
                    "isolated_iqr_ms": costs.latency_iqr_ms,
                    "gmacs_same": abs(costs.gmacs - float(t.get("gmacs", costs.gmacs))) < 1e-6}
        rows.append(attempt("latency", {"trial": t["number"], "preset": t.get("preset", ""), "backend": backend,
                                        "math": fp32_label(device) if backend == "torch" else "fp32 (ONNX Runtime)",
                                        "in_search_ms": t["latency_ms"]}, again))
    return rows
