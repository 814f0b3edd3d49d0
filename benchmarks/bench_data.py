"""Data at real sizes: load time and memory of a Cityscapes-layout set, what Ray trials share,
and DUpsampling's fit against the number of label maps (flat memory, linear time).

Each measurement runs in a fresh child process, so its peak RSS is its own.

    python benchmarks/bench_data.py [--images 200] [--maps 100,1000,3000] [--root DIR]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import save  # noqa: E402

CITYSCAPES_TRAIN = 2975


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _private_mb() -> float:
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean", "Private_Dirty"))) / 1024


def _in_child(fn, *args) -> dict:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=lambda: q.put(fn(*args)))
    p.start()
    out = q.get()
    p.join()
    return out


def _load(root: str, h: int, w: int) -> dict:
    from trainers.data import load_data

    before = _peak_mb()
    t = time.perf_counter()
    data = load_data(root, h, w)
    seconds = time.perf_counter() - t
    n = len(data.train) + len(data.val)
    held = (data.train.nbytes + data.val.nbytes) / 2**20
    return {"size": f"{h}x{w}", "images": n, "load_s": seconds, "ms_per_image": 1000 * seconds / n,
            "held_mb": held, "bytes_per_image": held * 2**20 / n, "peak_rss_growth_mb": _peak_mb() - before,
            f"cityscapes_{CITYSCAPES_TRAIN}_gb": CITYSCAPES_TRAIN * held / n / 1024,
            "worker_private_growth_mb": _ray_worker_growth(data)}


def _ray_worker_growth(data) -> float:
    """Private memory a Ray worker gains by reading every byte of the data set: ~0 when shared."""
    import os

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")

    @ray.remote
    def touch(d) -> float:
        before = _private_mb()
        total = int(d.train.images.sum()) + int(d.train.masks.sum())  # reads every byte
        return _private_mb() - before + 0 * total

    ref = ray.put(data)
    growth = ray.get(touch.remote(ref))
    ray.shutdown()
    return growth


def _fit(n_maps: int, ratio: int, h: int, w: int) -> dict:
    import torch

    from search_spaces.blocks import fit_reconstruction

    def maps():
        gen = torch.Generator().manual_seed(0)
        for _ in range(n_maps):  # blocky layouts of 19 classes with ignored pixels, made on the fly
            grid = torch.randint(0, 19, (h // 32, w // 32), generator=gen, dtype=torch.uint8)
            grid[0, :4] = 255
            yield grid.repeat_interleave(32, 0).repeat_interleave(32, 1)

    before = _peak_mb()
    t = time.perf_counter()
    fit_reconstruction(maps(), num_classes=19, ratio=ratio, n=64)
    return {"label_maps": n_maps, "size": f"{h}x{w}", "ratio": ratio, "fit_s": time.perf_counter() - t,
            "peak_rss_growth_mb": _peak_mb() - before}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="training images generated (plus 10 %% validation)")
    p.add_argument("--maps", default="100,1000,3000")
    p.add_argument("--root", default=None, help="reuse (or keep) the generated data set here")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    from trainers.streets import write_cityscapes_layout

    root = Path(args.root or tempfile.mkdtemp(prefix="cityscapes-layout-"))
    if not (root / "leftImg8bit").is_dir():
        t = time.perf_counter()
        write_cityscapes_layout(root, args.images, max(1, args.images // 10), 512, 1024, seed=0)
        print(f"generated {args.images} + {max(1, args.images // 10)} images at 512x1024 in {time.perf_counter() - t:.0f} s -> {root}")
    loads = pd.DataFrame([_in_child(_load, str(root), h, w) for h, w in ((256, 512), (512, 1024))])
    save(loads, "data_load")
    fits = pd.DataFrame([_in_child(_fit, n, r, 512, 1024) for r in (1, 4) for n in map(int, args.maps.split(","))])
    save(fits, "dupsample_fit")


if __name__ == "__main__":
    main()
