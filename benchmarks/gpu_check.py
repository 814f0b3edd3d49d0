"""The search part of the one-shot GPU check: what a search does on one GPU shared by 4 trials.

    bash benchmarks/gpu_check.sh                         # on the GPU machine: installs, smoke, this, packs
    python benchmarks/gpu_check.py --dry-run --out DIR   # on the CPU at tiny sizes: every code path

Sections, in this order, each in its own try and time budget; each writes its CSV/JSON into the
output folder as soon as it finishes, so a run cut short still returns what it measured. A failed
section leaves its traceback in errors/<section>.txt. A section's status comes from its rows
(benchmarks/gpu_check_report.py): an error row, no rows or no finished trial make it "degraded".
  facts      nvidia-smi -L, torch / CUDA / cuDNN versions, TF32 flags, ONNX Runtime's providers, packages
  host       host vs device time of one batch's data work (index, to_float, augment), and a training step
  search     `nas.search` with 4 concurrent trials at 0.25 GPU on the embedded data (--no-validate):
             trials/hour, concurrency from the trials' training windows, GPU utilisation, power and SM
             clock over the trial phase, peak training memory (fit's: without the resident split); Tune's
             error files and the workers' stderr tails are kept (tune_errors/, worker_stderr/)
  latency    each searched net's in-search latency against the same net timed alone afterwards
  precision  bf16 / fp16 vs fp32 (TF32 where on) mIoU of two nets with TVConv and DUpsampling
  ladder     the resolution ladder's presets and front nets trained at 256x512 and 512x1024, four at a
             time: tau against the CPU ladder's 128x256 and 32x64, preset verdicts per rung
             (benchmarks/gpu_check_ladder.py)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import gpu_check_search as gs  # noqa: E402
from benchmarks.gpu_check_ladder import ladder  # noqa: E402
from benchmarks.gpu_check_report import Interrupted, Outcome, Runner, Tee, attempt  # noqa: E402
from benchmarks.gpu_check_train import host, precision  # noqa: E402

# Seconds per section; scaled down together when --deadline is shorter than their sum. The search
# gets the most: its first wave of trials (Ray start, worker imports) costs ~30 s before any finishes.
# The ladder's 150 s came out of the others (search 210 -> 180, precision 90 -> 60, host and latency
# 5 s each): the whole check still has to fit the one 8-minute call.
BUDGETS = {"facts": 15, "host": 25, "search": 180, "latency": 40, "precision": 60, "ladder": 150}
# A dry run ends in about 90 s; the search's budget is for a machine busy with other work.
DRY_BUDGETS = {"facts": 15, "host": 20, "search": 180, "latency": 30, "precision": 40, "ladder": 60}


class Check:
    """What the sections share: device, sizes, the output and work folders, the search's trials."""

    def __init__(self, out: Path, work: Path, dry: bool):
        import torch

        self.out, self.work, self.dry = out, work, dry
        self.cuda = not dry and torch.cuda.is_available()
        self.device = "cuda:0" if self.cuda else "cpu"  # indexed: every CUDA call names its card
        self.size = (32, 64) if dry else (256, 512)
        cores = os.cpu_count() or 1
        self.cpus_per_trial = cores / 4 if dry else max(1, cores // 4)  # four trials share the machine
        self.trials: list[dict] = []
        self.study_attrs: dict = {}

    def write(self, name: str, result, quiet: bool = False) -> None:
        """A list of rows as CSV, anything else as JSON; printed as a table either way (unless quiet)."""
        import pandas as pd

        if isinstance(result, list):
            table = pd.DataFrame(result)
            table.to_csv(self.out / f"{name}.csv", index=False)
            if not quiet:
                print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(table) else "(no rows)")
        else:
            (self.out / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
            for key, value in result.items():
                print(f"  {key:28s} {value:.4g}" if isinstance(value, float) else f"  {key:28s} {value}")


def _cmd(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=15).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"


def facts(ck: Check, budget: float) -> Outcome:
    from importlib import metadata

    import torch

    f = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
         "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
         "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
         # what "fp32" computes in this process and in the trials (both keep torch's defaults)
         "tf32_convs": torch.backends.cudnn.allow_tf32, "tf32_matmuls": torch.backends.cuda.matmul.allow_tf32}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.device("cuda:0"))
        f.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                 bf16_supported=torch.cuda.is_bf16_supported())
    f["nvidia_smi_L"] = _cmd(["nvidia-smi", "-L"])
    f["nvidia_smi"] = _cmd(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    try:
        import onnxruntime as ort
        f.update(onnxruntime=ort.__version__, onnxruntime_providers=ort.get_available_providers())
    except Exception as exc:
        f["onnxruntime"] = f"not importable ({exc})"
    for pkg in ("optuna", "ray", "pyarrow", "sqlalchemy", "fvcore", "iopath", "numpy", "pandas", "onnx"):
        try:
            f[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            f[pkg] = "missing"
    ck.write("facts", f)
    return Outcome([f], figures={k: f.get(k) for k in ("gpu", "torch", "tf32_convs", "optuna", "ray")})


def search(ck: Check, budget: float) -> Outcome:
    h, w = ck.size
    gpus, budget_n, epochs = (0, 4, 1) if ck.dry else (0.25, 200, 2)  # GPU: the time budget ends it, not N
    args = ["--budget", str(budget_n), "--size", f"{h}x{w}", "--gpus-per-trial", f"{gpus:g}",
            "--cpus-per-trial", f"{ck.cpus_per_trial:g}", "--max-concurrent", "4", "--no-validate",
            "--epochs", str(epochs), "--seed", "0"]
    if ck.dry:  # what `auto` picks on a GPU whose ONNX Runtime has no CUDA provider (and no export: faster)
        args += ["--latency-backend", "torch"]
    sampler = gs.GpuSampler(fake=ck.dry)
    try:
        ended = gs.run_search(ck.work, ck.out, args, budget)
    finally:
        sampler.stop()
        gs.keep_logs(ck.work, ck.out)  # Tune's error files and the workers' stderr, before the work folder goes
    log = (ck.out / "search.log").read_text(errors="replace").splitlines()
    print("  search log, last lines:\n    " + "\n    ".join(log[-12:]))
    db = ck.work / gs.STUDY / "study.db"
    if not db.is_file():  # the search died before its study existed: say why, from its own log
        raise RuntimeError(f"the search wrote no study (exit {ended['search_exit']}): {(log or ['no output'])[-1]}")
    ck.trials, ck.study_attrs = gs.read_trials(db)
    summary, rows = gs.summarise(ck.trials, time.time(), 4, sampler)
    ck.write("search_trials", rows)
    ck.write("search", {**ended, "size": f"{h}x{w}", "epochs": epochs, "gpus_per_trial": gpus,
                        "cpus_per_trial": ck.cpus_per_trial, **summary})
    if not summary["overlap_ok"]:
        print(f"  WARNING: at most {summary['max_concurrent_training']} trials trained at once, not 4")
    keys = ("trials_finished", "trials_per_hour", "max_concurrent_training", "gpu_util_mean_pct", "power_w_mean",
            "sm_clock_mhz_mean", "peak_train_mem_mb")
    return Outcome(rows, finished=summary["trials_finished"], figures={k: summary.get(k) for k in keys})


def latency(ck: Check, budget: float) -> Outcome:
    if not ck.trials:
        raise RuntimeError("no trials to time again (the search section did not run or found none)")
    rows = gs.isolated_latency(ck.trials, ck.study_attrs, ck.device, 0.8 * budget, runs=5 if ck.dry else 30)
    ck.write("latency", rows)
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    figures = {}
    if ratios:
        figures = {"nets": len(ratios), "device": ck.device, "ratio_median": statistics.median(ratios),
                   "ratio_max": max(ratios), "ratio_min": min(ratios)}
        ck.write("latency_summary", figures)
    return Outcome(rows, figures=figures)


def _interrupt(*_) -> None:
    raise Interrupted()


def no_cuda(ck: Check, budget: float) -> Outcome:
    raise RuntimeError("no CUDA device here: nothing measured (use --dry-run on a machine without a GPU)")


SECTIONS = {"facts": facts, "host": host, "search": search, "latency": latency, "precision": precision, "ladder": ladder}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="on CPU at tiny sizes, to catch bugs before the GPU run")
    p.add_argument("--out", default=str(gs.REPO / "results" / "bench" / "gpu_check" / "check"))
    p.add_argument("--deadline", type=float, default=None, help="seconds for the whole check (default: their sum)")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma list of sections to run")
    p.add_argument("--keep-work", action="store_true", help="keep the search's run folder and data cache")
    args = p.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)  # nothing left from an earlier run can pass for this one's
    out.mkdir(parents=True)
    sys.stdout = Tee(sys.stdout, out / "log.txt")
    signal.signal(signal.SIGTERM, _interrupt)
    budgets = DRY_BUDGETS if args.dry_run else BUDGETS
    wanted = [s for s in args.only.split(",") if s]
    total = sum(budgets[s] for s in wanted)
    scale = min(1.0, (args.deadline or total) / total)
    # Ray's socket paths under the work folder must stay under 107 bytes: a long TMPDIR is passed over
    work = Path(tempfile.mkdtemp(prefix="gpu_check_", dir="/tmp" if len(tempfile.gettempdir()) > 40 else None))
    os.environ.setdefault("LIGHTSEG_CACHE", str(work / "cache"))
    ck = Check(out, work, args.dry_run)
    runner = Runner(out, args.deadline or total, {"part": "check", "dry_run": ck.dry, "device": ck.device,
                                                   "started": time.strftime("%Y-%m-%d %H:%M:%S")},
                    planned=tuple(wanted))
    try:
        for name in wanted:  # without CUDA a GPU run reports its facts and fails the rest
            fn = SECTIONS[name] if ck.cuda or args.dry_run or name == "facts" else no_cuda
            runner.run(name, lambda b, fn=fn: fn(ck, b), budgets[name] * scale)
    except Interrupted:
        print("\ninterrupted by the time limit: the sections above wrote what they measured")
        runner.info["interrupted"] = True
    finally:
        runner.save()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nwrote {out}/")
    return 0 if runner.good and (args.dry_run or ck.cuda) else 1


if __name__ == "__main__":
    sys.exit(main())
