"""The GPU smoke: about a minute on one GPU without Optuna or Ray, run before the search check so that
the basics come back even when the search's dependencies do not install.

    python benchmarks/gpu_smoke.py --out DIR                # on the GPU machine (benchmarks/gpu_check.sh runs it)
    python benchmarks/gpu_smoke.py --out DIR --dry-run      # on the CPU at 32x64: every code path

Sections, each with its rows in DIR/<section>.csv and a status computed from them (gpu_check_report):
  share   claim a 0.25 memory share, read it back with torch's own query, and check that an allocation
          over the cap is refused and one under it passes
  fit     one bf16 epoch of `trainers.train.fit` (ERFNet, 96 images at 256x512) with each step's compute span over
          its period from CUDA events, and peak training memory with and without the resident data set
  graphs  batch-1 latency of the four presets, eager against CUDA-graph replay (clocks raised, time-
          based warm-up, CUDA events; fp32 labelled TF32 where TF32 is on)
  procs   training steps/s of one process at a 0.25 share against four side by side at 0.25 each,
          from the processes' own measurement windows (their overlap is reported)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

from benchmarks import gpu_smoke_timing as timing  # noqa: E402
from benchmarks.gpu_check_report import Interrupted, Outcome, Runner, Tee, attempt, write_rows  # noqa: E402

BUDGETS = {"share": 10, "fit": 30, "graphs": 25, "procs": 45}
SHARE = 0.25


class Smoke:
    def __init__(self, out: Path, dry: bool):
        self.out, self.dry = out, dry
        self.cuda = not dry and torch.cuda.is_available()
        self.device = "cuda:0" if self.cuda else "cpu"  # an indexed device: what every CUDA call is given
        self.size = (32, 64) if dry else (256, 512)


def share(sm: Smoke, budget: float) -> Outcome:
    from trainers.device import Device
    from trainers.gpu_share import claim_share

    dev = torch.device(sm.device)
    total = torch.cuda.get_device_properties(dev).total_memory

    def claim() -> dict:
        claim_share(Device.parse(sm.device, SHARE))
        getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
        if getter is None:
            raise RuntimeError(f"torch {torch.__version__} has no get_per_process_memory_fraction to read the cap")
        got = float(getter(dev))
        if abs(got - SHARE) > 1e-6:
            raise RuntimeError(f"asked for {SHARE}, torch reports {got}")
        return {"reported": got}

    def allocate(fraction: float, refused: bool):
        def fn() -> dict:
            try:
                block = torch.empty(int(fraction * total), dtype=torch.uint8, device=dev)
                del block
            except torch.OutOfMemoryError:
                if refused:
                    return {"refused": True}
                raise
            if refused:
                raise RuntimeError(f"{fraction} of the card was allocated under a {SHARE} cap")
            return {"refused": False}
        return fn

    rows = []
    try:
        rows.append(attempt("share", {"check": f"claim {SHARE} and read it back", "requested": SHARE}, claim))
        rows.append(attempt("share", {"check": "allocate 0.30 of the card: refused"}, allocate(0.30, True)))
        rows.append(attempt("share", {"check": "allocate 0.20 of the card: passes"}, allocate(0.20, False)))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)  # the later sections get the whole card
        torch.cuda.empty_cache()
    write_rows(sm.out, "share", rows)
    return Outcome(rows, figures={"share_reported": rows[0].get("reported"), "card_gib": round(total / 2**30, 1)})


def _resident_mb(split, device: str) -> float:
    """The memory the training split takes when TrainBatches keeps it on the device (0 when staged)."""
    from trainers.batches import TrainBatches

    if not timing.cuda(device):
        return 0.0
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    batches = TrainBatches(split, device)
    held = torch.cuda.memory_allocated(device) - before
    del batches
    torch.cuda.empty_cache()
    return held / 2**20


def _peak_reset(device: str) -> int | None:
    """Reset the allocator's peak; what is allocated now (None on the CPU)."""
    if not timing.cuda(device):
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def fit_epoch(sm: Smoke, budget: float) -> Outcome:
    from search_spaces import load_preset
    from trainers.data import load_data
    from trainers.train import TrainConfig, fit

    h, w = sm.size
    # six steps of 16 on the GPU: the embedded set is generated on the CPU, ~0.1 s an image at 256x512
    data = load_data(None, h, w, seed=0, **({"n_train": 24, "n_val": 8} if sm.dry else {"n_train": 96, "n_val": 16}))
    spec = load_preset("erfnet", h, w, data.info.num_classes, 3)
    resident = _resident_mb(data.train, sm.device)
    timing.raise_clocks(sm.device)
    base = _peak_reset(sm.device)
    with timing.StepEvents(sm.device) as events:
        res = fit(spec, data, TrainConfig(epochs=1, batch_size=8 if sm.dry else 16, seed=0, device=sm.device,
                                          precision="bf16"))
    rows = events.rows()
    write_rows(sm.out, "fit_steps", rows)
    shares = [r["compute_share"] for r in rows[1:] if r["compute_share"] is not None]  # step 1 loads kernels
    # measured here too, whatever fit counts in its own figure: the peak above what was allocated
    # before fit, less the training split that fit's TrainBatches put on the card
    own = None if base is None else (torch.cuda.max_memory_allocated(sm.device) - base) / 2**20 - resident
    figures = {"net": "erfnet", "size": f"{h}x{w}", "precision": res.precision, "steps_timed": len(rows),
               "train_s": res.train_seconds, "loss": res.history[-1].loss,
               "compute_share_median": statistics.median(shares) if shares else None,
               "compute_share_min": min(shares) if shares else None,
               "share_clock": rows[0]["clock"] if rows else None,
               "resident_data_mb": resident, "peak_train_mem_without_data_mb": own,
               "fit_reported_peak_train_mem_mb": res.peak_train_mem_mb}
    return Outcome(rows, figures=figures)


def graphs(sm: Smoke, budget: float) -> Outcome:
    from search_spaces import build_model, load_preset
    from search_spaces.presets import PRESET_NAMES
    from trainers.timing import example_input, warm_caches

    h, w = sm.size
    timing.raise_clocks(sm.device)
    rows, end = [], time.time() + budget
    for name in PRESET_NAMES:
        def one(name=name) -> dict:
            if time.time() > end:  # a preset not timed is a gap in the figures: an error row, not silence
                raise TimeoutError("not timed: the section's budget was spent")
            spec = load_preset(name, h, w)
            model = build_model(spec).to(sm.device).eval()
            warm_caches(model, spec, sm.device)
            return timing.latency(model, example_input(spec, sm.device), sm.device, reps=3 if sm.dry else 20)
        rows.append(attempt("graphs", {"preset": name, "size": f"{h}x{w}", "batch": 1, "device": sm.device}, one))
        print(f"  {rows[-1]}", flush=True)
    write_rows(sm.out, "graphs", rows)
    return Outcome(rows, figures={r["preset"]: {k: r.get(k) for k in ("eager_ms", "graph_ms", "math", "error")
                                                if r.get(k) is not None} for r in rows})


def _run_workers(sm: Smoke, n: int, seconds: float, wait_s: float) -> list[dict]:
    """`n` worker processes started together; each gives one JSON line, or its row says why not."""
    h, w = sm.size
    args = {"device": sm.device, "size": [h, w], "share": SHARE, "preset": "edanet", "batch": 4 if sm.dry else 8,
            "threads": 1 if sm.dry else 2, "seconds": seconds}
    procs, lines, errs = [], [], []
    for i in range(n):
        err = open(sm.out / f"procs_{n}x_worker{i}.stderr.txt", "w")  # the tail comes back in the archive
        p = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(args)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=err, text=True, cwd=Path(__file__).parent.parent)
        got: list[str] = []
        threading.Thread(target=lambda p=p, got=got: got.extend(p.stdout), daemon=True).start()
        procs.append(p), lines.append(got), errs.append(err)
    end = time.time() + wait_s
    while time.time() < end and not all("ready\n" in g or p.poll() is not None for p, g in zip(procs, lines)):
        time.sleep(0.1)
    start_at = time.time() + 0.3
    for p in procs:
        try:
            p.stdin.write(f"{start_at}\n")
            p.stdin.close()
        except OSError:  # it has ended already: its row says so below
            pass
    rows = []
    for i, (p, got, err) in enumerate(zip(procs, lines, errs)):
        try:
            p.wait(max(5.0, seconds + 30))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        err.close()
        time.sleep(0.05)  # the reader thread takes the last line
        results = [json.loads(line) for line in got if line.startswith("{")]
        row = {"processes": n, "worker": i, "share": SHARE, "preset": args["preset"], "batch": args["batch"]}

        def result(results=results, p=p, i=i) -> dict:
            if not results:
                tail = (sm.out / f"procs_{n}x_worker{i}.stderr.txt").read_text(errors="replace").strip()[-300:]
                raise RuntimeError(f"worker exited {p.returncode} without a result: {tail}")
            return results[-1]
        rows.append(attempt("procs", row, result))
    return rows


def procs(sm: Smoke, budget: float) -> Outcome:
    from benchmarks.gpu_check_search import max_overlap

    seconds = 2.0 if sm.dry else 6.0
    rows = []
    for n in (1, 4):
        rows += _run_workers(sm, n, seconds, wait_s=max(15.0, budget / 2 - 2 * seconds))
    write_rows(sm.out, "procs", rows)
    total = {n: sum(r.get("steps_per_s", 0.0) for r in rows if r["processes"] == n) for n in (1, 4)}
    four = [(r["started_at"], r["finished_at"]) for r in rows if r["processes"] == 4 and "started_at" in r]
    figures = {"steps_per_s_1_process": total[1], "steps_per_s_4_processes": total[4],
               "four_over_one": total[4] / total[1] if total[1] else None,
               "max_overlap_of_4": max_overlap(four) if four else 0, "seconds_each": seconds}
    return Outcome(rows, figures=figures)


def no_cuda(sm, budget: float) -> Outcome:
    raise RuntimeError("no CUDA device here: nothing measured (use --dry-run on a machine without a GPU)")


SECTIONS = {"share": share, "fit": fit_epoch, "graphs": graphs, "procs": procs}


def _interrupt(*_) -> None:
    raise Interrupted()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=False, default=None)
    p.add_argument("--dry-run", action="store_true", help="on the CPU at 32x64")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma list of sections")
    p.add_argument("--deadline", type=float, default=sum(BUDGETS.values()))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        timing.worker(json.loads(args.worker))
        return 0
    out = Path(args.out or "results/bench/gpu_check/smoke")
    out.mkdir(parents=True, exist_ok=True)
    sys.stdout = Tee(sys.stdout, out / "log.txt")
    signal.signal(signal.SIGTERM, _interrupt)
    sm = Smoke(out, args.dry_run)
    info = {"part": "smoke", "dry_run": sm.dry, "device": sm.device, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if sm.cuda else None, "fp32_means": timing.fp32_label(sm.device),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(info))
    wanted = [s for s in args.only.split(",") if s]
    scale = min(1.0, args.deadline / sum(BUDGETS[s] for s in wanted))
    runner = Runner(out, args.deadline, info, planned=tuple(wanted))
    if not args.dry_run and not sm.cuda:
        print("no CUDA device here (use --dry-run on a machine without a GPU)")
    try:
        for name in wanted:  # a dry run has no memory share to claim; a GPU run without CUDA measures nothing
            fn = SECTIONS[name] if sm.cuda or args.dry_run else no_cuda
            skip = "no CUDA device here" if args.dry_run and name == "share" else ""
            runner.run(name, lambda b, fn=fn: fn(sm, b), BUDGETS[name] * scale, skip=skip)
    except Interrupted:
        print("\ninterrupted by the time limit: the sections above wrote what they measured")
    runner.save()
    return 0 if runner.good and (sm.cuda or args.dry_run) else 1


if __name__ == "__main__":
    sys.exit(main())
