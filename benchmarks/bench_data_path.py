"""Seconds per training batch of the data path (index, float, augment, masks to int64): the old
per-sample loop against the batched one, and the batched path's share of a whole training step
(forward, backward, optimizer step of a preset) at the same batch. On a GPU machine the device rows
time both paths with the split where `fit` keeps it.

    python benchmarks/bench_data_path.py [--batch 16] [--size 256x512] [--preset edanet] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import save  # noqa: E402
from search_spaces import build_model, load_preset  # noqa: E402
from trainers.batches import TrainBatches  # noqa: E402
from trainers.data import load_data, to_float  # noqa: E402


def augment_per_sample(images, masks, gen, scale=(1.0, 1.5)):
    """The per-sample loop `fit` ran before the batched path: the baseline."""
    n, _, h, w = images.shape
    out_i, out_m = torch.empty_like(images), torch.empty_like(masks)
    for k in range(n):
        s = scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=gen).item()
        sh, sw = max(h, round(h * s)), max(w, round(w * s))
        img = F.interpolate(images[k:k + 1], size=(sh, sw), mode="bilinear", align_corners=False)
        msk = F.interpolate(masks[k:k + 1, None].float(), size=(sh, sw), mode="nearest")[:, 0]
        y0 = int(torch.randint(0, sh - h + 1, (), generator=gen))
        x0 = int(torch.randint(0, sw - w + 1, (), generator=gen))
        img, msk = img[..., y0:y0 + h, x0:x0 + w], msk[..., y0:y0 + h, x0:x0 + w]
        if torch.rand((), generator=gen) < 0.5:
            img, msk = img.flip(-1), msk.flip(-1)
        out_i[k], out_m[k] = img[0], msk[0].to(masks.dtype)
    return out_i, out_m


def _old_path(split, device: str):
    def batch(idx, gen):
        x, y = augment_per_sample(to_float(split.images[idx]), split.masks[idx], gen)
        return x.to(device), y.long().to(device)
    return batch


def _timed(fn, repeats: int, device: str) -> list[float]:
    fn()  # warm-up: allocator, kernels, caches
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return times


def _step_seconds(preset: str, data, batch, repeats: int, device: str) -> float:
    """Median seconds of one training step (forward, loss, backward, optimizer step) in fp32."""
    h, w = data.train.images.shape[-2:]
    model = build_model(load_preset(preset, h, w, data.info.num_classes, data.info.in_channels)).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = batch

    def step():
        loss = F.cross_entropy(model(x), y, ignore_index=data.info.ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return statistics.median(_timed(step, repeats, device))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", default="256x512")
    p.add_argument("--preset", default="edanet", help="the net whose training step the data path is compared with")
    p.add_argument("--repeats", type=int, default=30, help="timed batches per path")
    p.add_argument("--step-repeats", type=int, default=5, help="timed training steps")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="3 batches and 1 step: checks that it runs")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    if args.quick:
        args.repeats, args.step_repeats = 3, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    h, w = map(int, args.size.split("x"))
    data = load_data(None, h, w, n_train=2 * args.batch, n_val=1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        gen = torch.Generator().manual_seed(0)
        paths = {"per-sample (old)": _old_path(data.train, device), "batched": TrainBatches(data.train, device)}
        seconds = {}
        for name, path in paths.items():
            def one(path=path):
                return path(torch.randperm(len(data.train), generator=gen)[:args.batch], gen)
            times = _timed(one, args.repeats, device)
            seconds[name] = statistics.median(times)
            rows.append({"device": device, "path": name, "batch": args.batch, "size": args.size,
                         "threads": torch.get_num_threads(), "s_per_batch": seconds[name], "min_s": min(times),
                         "speedup": seconds["per-sample (old)"] / seconds[name]})
        batch = paths["batched"](torch.arange(args.batch), gen)
        step = _step_seconds(args.preset, data, batch, args.step_repeats, device)
        rows.append({"device": device, "path": f"train step ({args.preset}, fp32)", "batch": args.batch,
                     "size": args.size, "threads": torch.get_num_threads(), "s_per_batch": step})
        for row in rows[-3:-1]:
            row["share_of_step"] = row["s_per_batch"] / (row["s_per_batch"] + step)
    save(pd.DataFrame(rows), "data_path")


if __name__ == "__main__":
    main()
