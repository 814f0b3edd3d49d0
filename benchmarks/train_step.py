"""Where a CPU training step goes at a real size, and what makes it faster.

One training step (batch 16, AdamW, the search's augmentation) at 128x256 for EDANet, ERFNet and
two front nets of the example run, on one thread:
- the split of a step: data path, forward + loss, backward, optimiser (wall clock), and the
  profiler's self time by kind of op (dense convolution, depthwise/grouped convolution, TVConv's
  unfold, normalisation, the rest);
- steps per second for each variant: fp32 contiguous (the step before this benchmark), fp32
  channels_last (fit's CPU layout since), bf16 autocast (the CPU's avx512_bf16 flag is checked and
  printed), bf16 channels_last, and torch.compile;
- two concurrent 1-thread trainings, unpinned and pinned one per core (the search's placement).

    python benchmarks/train_step.py            # -> results/bench/train_step.csv, train_step_ops.csv, train_step_placement.csv
    python benchmarks/train_step.py --size 32x64 --steps 20 --parts steps   # the search's default size
    python benchmarks/train_step.py --quick    # 32x64, 2 steps: checks that it runs

Every variant of a net is timed in the same process, one after the other, so the ratios between
them are what to read; absolute rates move 2x with the machine's hour.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, save  # noqa: E402
from benchmarks.scale_ladder import at_size, ladder_nets  # noqa: E402

NETS = ("edanet", "erfnet", "trial_0070", "trial_0086")
VARIANTS = ("fp32", "channels_last", "bf16", "bf16_channels_last", "compile")


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively (else autocast emulates it, slower than fp32)."""
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text() or "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def make_step(name: str, variant: str, height: int, width: int):
    """A function doing one training step of net `name` in `variant`, returning its parts' seconds
    (data, forward + loss, backward, optimiser). DUpsampling's fit is done here, outside the step."""
    from trainers.batches import TrainBatches
    from trainers.data import load_data
    from trainers.train import prepare_model

    net = next(n for n in ladder_nets() if n.name == name)
    spec = at_size(net, height, width)
    data = load_data(None, height, width, seed=0)
    model = prepare_model(spec, data, seed=0).train()
    last = "channels_last" in variant
    if last:
        model = model.to(memory_format=torch.channels_last)
    run = torch.compile(model) if variant == "compile" else model
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    batches, gen = TrainBatches(data.train, "cpu"), torch.Generator().manual_seed(0)

    def step() -> tuple[float, float, float, float]:
        t0 = time.perf_counter()
        x, y = batches(torch.randperm(len(data.train), generator=gen)[:16], gen)
        if last:
            x = x.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if "bf16" in variant else contextlib.nullcontext():
            loss = F.cross_entropy(run(x), y, ignore_index=data.info.ignore_index)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        return t1 - t0, t2 - t1, t3 - t2, time.perf_counter() - t3

    return step


def step_parts(name: str, variant: str, height: int, width: int, steps: int) -> dict:
    """Steps per second of `steps` steps after 2 warm-up steps (compilation included there), and
    each part's share of the time."""
    step = make_step(name, variant, height, width)
    t0 = time.perf_counter()
    step(), step()
    warmup = time.perf_counter() - t0
    parts = dict(zip(("data", "forward", "backward", "optimiser"), map(sum, zip(*(step() for _ in range(steps))))))
    total = sum(parts.values())
    return {"net": name, "variant": variant, "size": f"{height}x{width}", "steps": steps,
            "steps_per_s": steps / total, "warmup_s": warmup, **{f"{k}_share": v / total for k, v in parts.items()}}


KINDS = (("pixel_shuffle", "decomposition (pixel shuffle)"), ("pixel_unshuffle", "decomposition (pixel shuffle)"),
         ("im2col", "TVConv unfold"), ("col2im", "TVConv unfold"), ("unfold", "TVConv unfold"),
         ("batch_norm", "batch norm"), ("upsample", "upsampling"), ("softmax", "loss"), ("nll", "loss"),
         ("pool", "pooling"), ("Optimizer", "optimiser"), ("_foreach", "optimiser"), ("grid_sampler", "data path"),
         ("randperm", "data path"), ("copy_", "copies"), ("_to_copy", "copies"), ("cat", "copies"))


def op_kind(name: str, shapes: list) -> str:
    """The kind of a profiled op; a convolution is depthwise/grouped when its weight has one input channel."""
    if "convolution" in name or "conv2d" in name:
        weight = shapes[1] if len(shapes) > 1 and shapes[1] else None
        return "depthwise/grouped conv" if weight and len(weight) == 4 and weight[1] == 1 else "dense conv"
    return next((kind for key, kind in KINDS if key in name), "elementwise & other")


def op_shares(name: str, height: int, width: int) -> pd.DataFrame:
    """The profiler's self CPU time of 3 fp32 steps, summed by kind of op."""
    from torch.profiler import ProfilerActivity, profile

    step = make_step(name, "fp32", height, width)
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(3):
            step()
    rows = [(op_kind(e.key, e.input_shapes), e.self_cpu_time_total) for e in prof.key_averages(group_by_input_shape=True)]
    table = pd.DataFrame(rows, columns=["kind", "us"]).groupby("kind")["us"].sum()
    return pd.DataFrame({"net": name, "kind": table.index, "share": (table / table.sum()).to_numpy()})


def concurrent(name: str, height: int, width: int, steps: int, pinned: bool) -> float:
    """Summed steps/s of two 1-thread trainings of `name` at once, pinned one per core or not."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r}); import torch; "
            f"torch.set_num_threads(1); from benchmarks.train_step import step_parts; "
            f"print(step_parts({name!r}, 'fp32', {height}, {width}, {steps})['steps_per_s'])")
    procs = []
    for core in (0, 1):
        cmd = [sys.executable, "-c", code]
        if pinned:
            cmd = ["taskset", "-c", str(core % os.cpu_count()), *cmd]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    return sum(float(p.communicate()[0].split()[-1]) for p in procs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="128x256")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--parts", default="steps,ops,placement", help="which measurements: steps, ops, placement")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    h, w = (32, 64) if args.quick else map(int, args.size.split("x"))
    steps = 2 if args.quick else args.steps
    parts = args.parts.split(",")
    suffix = "_quick" if args.quick else "" if (h, w) == (128, 256) else f"_{h}x{w}"
    print(f"CPU bf16: {'native (avx512_bf16/amx)' if cpu_has_bf16() else 'emulated'}; {machine()}", flush=True)
    if "steps" in parts:
        rows = []
        for name in NETS:
            for variant in VARIANTS:
                rows.append(step_parts(name, variant, h, w, steps))
                print(f"{name} {variant}: {rows[-1]['steps_per_s']:.3f} steps/s", flush=True)
        table = pd.DataFrame(rows)
        base = table[table.variant == "fp32"].set_index("net")["steps_per_s"]
        table["vs_fp32"] = table["steps_per_s"] / table["net"].map(base)
        save(table, "train_step" + suffix)
    if "ops" in parts:
        ops = pd.concat([op_shares(n, h, w) for n in NETS])
        save(ops.pivot(index="net", columns="kind", values="share").reset_index(), "train_step_ops" + suffix)
    if "placement" in parts:
        placement = [{"net": n, "placement": "pinned" if pin else "unpinned",
                      "steps_per_s_total": concurrent(n, h, w, steps, pin)} for n in NETS[:2] for pin in (False, True)]
        single = {n: step_parts(n, "fp32", h, w, steps)["steps_per_s"] for n in NETS[:2]}
        table = pd.DataFrame(placement)
        table["vs_one_alone"] = table["steps_per_s_total"] / table["net"].map(single)
        save(table, "train_step_placement" + suffix)


if __name__ == "__main__":
    main()
