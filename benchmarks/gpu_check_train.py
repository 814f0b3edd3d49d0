"""The training part of the GPU check (benchmarks/gpu_check.py): where a batch's time goes (host
or device), one training step for comparison, and mixed precision against fp32 on two nets with
TVConv and DUpsampling. Each function takes the check (`ck`: device, sizes, output) and its budget.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import torch

from benchmarks.gpu_check_report import Outcome, attempt
from benchmarks.gpu_smoke_timing import fp32_label


def _augment(x, y, seed: int):
    """Batched augmentation as training applies it: draws from a seeded CPU generator, work on x's device."""
    from trainers.batches import augment

    return augment(x, y, torch.Generator().manual_seed(seed))


def _median_ms(fn, reps: int, sync: bool) -> float:
    times = []
    for i in range(reps + 1):  # the first call warms up (allocator, kernels) and is not counted
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(i)
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:]) * 1e3


def train_step_ms(ck, num_classes: int, reps: int) -> tuple[float, str]:
    """One full training step (forward, loss, backward, AdamW) of ERFNet at the check's size."""
    import torch.nn.functional as F

    from search_spaces import build_model, load_preset
    from trainers import train

    h, w = ck.size
    model = build_model(load_preset("erfnet", h, w, num_classes, 3)).to(ck.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    precision = train.resolve_precision("auto", ck.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    x = torch.randn(16, 3, h, w, device=ck.device)
    y = torch.randint(0, num_classes, (16, h, w), device=ck.device)

    def step(_):
        with torch.autocast(torch.device(ck.device).type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # fp16 without a scaler is fine here: only the time is measured
        opt.step()

    step(0)
    return _median_ms(step, reps, ck.cuda), precision


def host(ck, budget: float) -> Outcome:
    from trainers.data import load_data, to_float

    h, w = ck.size
    data = load_data(None, h, w, seed=0)  # the embedded set; also fills the cache the search then reads
    torch.set_num_threads(int(max(1, ck.cpus_per_trial)))  # what each of four trials gets
    reps, n = (2 if ck.dry else 10), 16
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:n]
    from trainers.batches import TrainBatches

    rows = []

    def add(where: str, stage: str, fn) -> None:  # synchronised on a GPU, host steps too (it costs microseconds)
        rows.append({"where": where, "stage": stage, "ms": _median_ms(fn, reps, ck.cuda)})

    def stages(where: str, images, masks, ix) -> None:
        imgs, m = images[ix], masks[ix]
        xf = to_float(imgs)
        add(where, "index uint8 batch", lambda i: (images[ix], masks[ix]))
        add(where, "to_float", lambda i: to_float(imgs))
        add(where, "augment", lambda i: _augment(xf, m, i))
        add(where, "masks to int64", lambda i: m.long())

    stages("host", data.train.images, data.train.masks, idx)
    if ck.cuda:
        xa, ya = _augment(to_float(data.train.images[idx]), data.train.masks[idx], 0)
        add("bus", "copy float32 + int64 to GPU", lambda i: (xa.to(ck.device), ya.long().to(ck.device)))
        stages("device", data.train.images.to(ck.device), data.train.masks.to(ck.device), idx.to(ck.device))
    else:
        print("  device side: skipped (no CUDA)")
    def whole() -> dict:  # the whole batch as training makes it, where it makes it
        batches = TrainBatches(data.train, ck.device)
        return {"ms": _median_ms(lambda i: batches(idx, torch.Generator().manual_seed(i)), reps, ck.cuda)}

    rows.append(attempt("host", {"where": "device" if ck.cuda else "host",
                                 "stage": f"whole batch (TrainBatches on {ck.device})"}, whole))

    def training_step() -> dict:
        ms, precision = train_step_ms(ck, data.info.num_classes, reps)
        return {"stage": f"training step, ERFNet, {precision}", "ms": ms}

    rows.append(attempt("host", {"where": ck.device, "stage": "training step, ERFNet"}, training_step))
    step = rows[-1].get("ms", float("nan"))
    for r in rows:
        r.update(batch=f"{n}x3x{h}x{w}", threads=torch.get_num_threads())
    ck.write("host", rows)
    # the host path: what a step waited for before (host stages and the float copy); the device path: on the GPU
    parts = [r for r in rows if r["stage"].split()[0] not in ("whole", "training") and "ms" in r]
    per = {"host": sum(r["ms"] for r in parts if r["where"] in ("host", "bus")),
           "device": sum(r["ms"] for r in parts if r["where"] == "device")}
    summary = {"host_path_ms": per["host"], "train_step_ms": step, "host_share_of_step": per["host"] / (per["host"] + step)}
    if ck.cuda:
        summary.update(device_path_ms=per["device"], device_share_of_step=per["device"] / (per["device"] + step))
    ck.write("host_summary", summary)
    if ck.cuda:
        torch.cuda.empty_cache()  # the search's trials get the card
    return Outcome(rows, figures=summary)


def precision_nets(h: int, w: int, num_classes: int) -> dict:
    """Two nets with TVConv and DUpsampling, different in everything else."""
    from search_spaces import ArchSpec, DecoderSpec, InputSpec, StageSpec

    inp = InputSpec(height=h, width=w, in_channels=3, num_classes=num_classes)

    def net(name, core, widths, depths, ratio, downsampler, tvconv_from, n):
        stages = tuple(StageSpec(width=c, depth=d, core=core, kernel=3, dilations=(1, 2), dropout=0.03)
                       for c, d in zip(widths, depths))
        return ArchSpec(input=inp, stages=stages, decoder=DecoderSpec(kind="dupsample", width=n), ratio=ratio,
                        downsampler=downsampler, tvconv_from=tvconv_from, name=name)

    return {"nb1d_tv2_dup32": net("nb1d_tv2_dup32", "nb1d", (16, 48, 96), (1, 2, 3), 1, "erfnet", 2, 32),
            "ssnbt_r2_tv3_dup64": net("ssnbt_r2_tv3_dup64", "ssnbt", (16, 32, 64), (1, 2, 2), 2, "dwsep", 3, 64)}


def precision(ck, budget: float) -> Outcome:
    from trainers.data import load_data
    from trainers.train import TrainConfig, fit

    if "precision" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        raise RuntimeError("TrainConfig has no precision field in this version")
    h, w = ck.size
    # a dry run only checks that every precision trains: a quarter of the images
    data = load_data(None, h, w, seed=0, **({"n_train": 64, "n_val": 16} if ck.dry else {}))
    nets = precision_nets(h, w, data.info.num_classes)
    epochs = 1 if ck.dry else 3
    first = next(iter(nets))
    # fp32 twice on one net: how far two fp32 runs of one seed already differ (nondeterministic kernels)
    jobs = [(name, p) for name in nets for p in ("fp32", "bf16", "fp16")] + [(first, "fp32")]
    start, rows, longest = time.time(), [], 0.0
    for name, p in jobs:
        # a dry run checks that every precision trains, on a machine of any speed: it skips none
        if not ck.dry and time.time() - start + longest > budget:
            print(f"  {name} {p}: skipped, it would overrun the section's budget")
            continue
        t = time.time()
        # "fp32" on a card with TF32 on is TF32 convolutions: said in every row that shows it
        row = {"net": name, "precision": p, "math": fp32_label(ck.device) if p == "fp32" else p,
               "device": ck.device, "epochs": epochs}

        def train(name=name, p=p) -> dict:  # e.g. fp16 autocast refused on this device: a row, not a lost section
            res = fit(nets[name], data, TrainConfig(epochs=epochs, batch_size=16, seed=0, device=ck.device, precision=p))
            fp32 = [r["miou"] for r in rows if r["net"] == name and r["precision"] == "fp32" and "miou" in r]
            return dict(resolved=res.precision, miou=res.miou, delta_vs_fp32=res.miou - fp32[0] if fp32 else None,
                        final_loss=res.history[-1].loss, train_s=res.train_seconds,
                        peak_train_mem_mb=res.peak_train_mem_mb, skipped_steps=res.skipped_steps)
        rows.append(attempt("precision", row, train))
        longest = max(longest, time.time() - t)
        print(f"  {name} {p}: " + (f"mIoU {row['miou']:.4f} in {time.time() - t:.0f} s" if "miou" in row else row["error"]),
              flush=True)
        ck.write("precision", rows, quiet=True)  # after every training: a timeout keeps the finished ones
        if ck.cuda:
            torch.cuda.empty_cache()
    ck.write("precision", rows)
    deltas = {f"{r['net']} {r['precision']}": r["delta_vs_fp32"] for r in rows if r.get("delta_vs_fp32") is not None}
    return Outcome(rows, figures={"math_of_fp32": fp32_label(ck.device), "miou_delta_vs_fp32": deltas})
