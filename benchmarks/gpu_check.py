"""One-shot GPU check: what a search does on one GPU shared by 4 trials, in at most 8 minutes.

    bash benchmarks/gpu_check.sh WHEELS                  # on the GPU machine: installs what it lacks, runs this
    python benchmarks/gpu_check.py --dry-run --out DIR   # on CPU at tiny sizes: every code path, in about a minute

Sections, in this order, each in its own try and time budget; each writes its CSV/JSON into the
output folder ($OUT, else results/bench/gpu_check/) as soon as it finishes, so a run cut short
still returns what it measured. A failed section leaves its traceback in errors/<section>.txt.
  facts      nvidia-smi -L, torch / CUDA / cuDNN versions, ONNX Runtime's providers, package versions
  host       host vs device time of one batch's data work (index, to_float, augment), and a training step
  search     `nas.search` with 4 concurrent trials at 0.25 GPU on the embedded data (--no-validate):
             trials/hour, GPU utilisation over the trial phase, the trials' overlap, peak training memory
  latency    each searched net's in-search latency against the same net timed alone afterwards
  precision  bf16 / fp16 vs fp32 mIoU of two nets with TVConv and DUpsampling
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
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import gpu_check_search as gs  # noqa: E402
from benchmarks.gpu_check_train import host, precision  # noqa: E402

# Seconds per section; scaled down together when --deadline is shorter than their sum. The search
# gets the most: its first wave of trials (Ray start, worker imports) costs ~30 s before any finishes.
BUDGETS = {"facts": 15, "host": 30, "search": 210, "latency": 45, "precision": 90}
# A dry run ends in about 90 s; the search's budget is for a machine busy with other work.
DRY_BUDGETS = {"facts": 15, "host": 20, "search": 180, "latency": 30, "precision": 40}


class Interrupted(BaseException):
    """SIGTERM (the wrapper's hard timeout): end the section in flight, keep what is written."""


class Tee:
    """stdout into the output folder too, so the log comes back with the figures."""

    def __init__(self, stream, path: Path):
        self.stream, self.file = stream, open(path, "a")

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.file.write(text)
        self.file.flush()

    def flush(self) -> None:
        self.stream.flush()


class Check:
    def __init__(self, out: Path, work: Path, dry: bool, deadline: float):
        import torch

        self.out, self.work, self.dry = out, work, dry
        self.start = time.time()
        self.end = self.start + deadline
        self.cuda = not dry and torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        self.size = (32, 64) if dry else (256, 512)
        cores = os.cpu_count() or 1
        self.cpus_per_trial = cores / 4 if dry else max(1, cores // 4)  # four trials share the machine
        self.trials: list[dict] = []
        self.study_attrs: dict = {}
        self.summary: dict = {"dry_run": dry, "device": self.device, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                              "sections": {}}

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

    def run(self, name: str, fn, budget: float) -> None:
        budget = min(budget, self.end - time.time())
        record = self.summary["sections"][name] = {"budget_s": round(budget, 1)}
        if budget < 5:
            record["status"] = "skipped: the check's deadline has passed"
            print(f"\n== {name}: {record['status']}")
            return self._save()
        print(f"\n== {name} (budget {budget:.0f} s, {self.device})", flush=True)
        start = time.time()
        record["status"] = "interrupted"
        try:
            fn(self, budget)
            record["status"] = "ok"
        except Exception:  # one broken section must not cost the others their figures
            text = traceback.format_exc()
            (self.out / "errors").mkdir(exist_ok=True)
            (self.out / "errors" / f"{name}.txt").write_text(text)
            print(text)
            record["status"] = "failed: " + text.strip().splitlines()[-1][:200]
        finally:
            record["seconds"] = round(time.time() - start, 1)
            self._save()

    def _save(self) -> None:
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1, default=str))


def _cmd(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=15).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"


def facts(ck: Check, budget: float) -> None:
    from importlib import metadata

    import torch

    f = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
         "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
         "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
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


def search(ck: Check, budget: float) -> None:
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
    log = (ck.out / "search.log").read_text(errors="replace").splitlines()
    print("  search log, last lines:\n    " + "\n    ".join(log[-12:]))
    ck.trials, ck.study_attrs = gs.read_trials(ck.work / gs.STUDY / "study.db")
    summary, rows = gs.summarise(ck.trials, time.time(), 4, sampler)
    ck.write("search_trials", rows)
    ck.write("search", {**ended, "size": f"{h}x{w}", "epochs": epochs, "gpus_per_trial": gpus,
                        "cpus_per_trial": ck.cpus_per_trial, **summary})
    if not summary["overlap_ok"]:
        print(f"  WARNING: at most {summary['max_concurrent_trials']} trials ran at once, not 4")


def latency(ck: Check, budget: float) -> None:
    if not ck.trials:
        raise RuntimeError("no trials to time again (the search section did not run or found none)")
    rows = gs.isolated_latency(ck.trials, ck.study_attrs, ck.device, 0.8 * budget, runs=5 if ck.dry else 30)
    ck.write("latency", rows)
    ratios = [r["ratio"] for r in rows]
    if ratios:
        ck.write("latency_summary", {"nets": len(ratios), "device": ck.device, "ratio_median": statistics.median(ratios),
                                     "ratio_max": max(ratios), "ratio_min": min(ratios)})


def _interrupt(*_) -> None:
    raise Interrupted()


SECTIONS = {"facts": facts, "host": host, "search": search, "latency": latency, "precision": precision}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="on CPU at tiny sizes, to catch bugs before the GPU run")
    p.add_argument("--out", default=os.environ.get("OUT") or str(gs.REPO / "results" / "bench" / "gpu_check"))
    p.add_argument("--deadline", type=float, default=None, help="seconds for the whole check (default: their sum)")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma list of sections to run")
    p.add_argument("--keep-work", action="store_true", help="keep the search's run folder and data cache")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.csv"), *out.glob("*.json"), *out.glob("*.txt"), *out.glob("search*")]:
        old.unlink()  # only this check's own outputs, so that none is left from an earlier run
    shutil.rmtree(out / "errors", ignore_errors=True)
    sys.stdout = Tee(sys.stdout, out / "log.txt")
    signal.signal(signal.SIGTERM, _interrupt)
    budgets = DRY_BUDGETS if args.dry_run else BUDGETS
    wanted = [s for s in args.only.split(",") if s]
    total = sum(budgets[s] for s in wanted)
    scale = min(1.0, (args.deadline or total) / total)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    os.environ.setdefault("LIGHTSEG_CACHE", str(work / "cache"))
    ck = Check(out, work, args.dry_run, args.deadline or total)
    if not args.dry_run and not ck.cuda:
        print("no CUDA device here: only the facts are reported (use --dry-run on a machine without a GPU)")
        wanted = ["facts"]
    try:
        for name in wanted:
            ck.run(name, SECTIONS[name], budgets[name] * scale)
    except Interrupted:
        print("\ninterrupted by the time limit: the sections above wrote what they measured")
        ck.summary["interrupted"] = True
    finally:
        ck.summary["seconds"] = round(time.time() - ck.start, 1)
        ck._save()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nwrote {out}/ ({ck.summary['seconds']} s)")
    failed = [n for n, s in ck.summary["sections"].items() if not s.get("status", "").startswith(("ok", "skipped"))]
    return 1 if failed or (not args.dry_run and not ck.cuda) else 0


if __name__ == "__main__":
    sys.exit(main())
