"""`python -m nas.train --arch X.yaml`: train one network, write checkpoint, metrics and predictions."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from search_spaces import ArchSpec
from trainers.costs import measure_costs
from trainers.data import SegData, load_data, to_float
from trainers.train import FitResult, TrainConfig, TrainingDiverged, fit, save_checkpoint

from .cli import UsageError, check_out_folder, parse_device, parse_size, require_at_least, require_positive, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nas.train", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", required=True, help="architecture YAML (an ArchSpec)")
    p.add_argument("--data", default=None, help="dataset folder (folder or Cityscapes layout); default: embedded street scenes")
    p.add_argument("--size", help="HxW training size; default: the spec's input size")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--schedule", default="poly", choices=("poly", "cosine"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="output folder")
    return p


def save_prediction_grid(path: Path, model: torch.nn.Module, data: SegData, n: int = 4, device: str = "cpu") -> None:
    """A PNG grid: image | ground truth | prediction, for the first n validation images."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = data.info.num_classes
    palette = np.array(data.info.palette or [plt.cm.tab20(i % 20)[:3] for i in range(k)], dtype=float)
    palette = palette / 255 if palette.max() > 1 else palette
    n = min(n, len(data.val))
    with torch.inference_mode():
        pred = model.eval()(to_float(data.val.images[:n]).to(device)).argmax(1).cpu().numpy()

    def colour(mask: np.ndarray) -> np.ndarray:
        out = np.ones(mask.shape + (3,))  # ignored pixels white
        valid = mask < k
        out[valid] = palette[mask[valid]]
        return out

    fig, axes = plt.subplots(n, 3, figsize=(9, 1.6 * n * data.val.images.shape[2] / data.val.images.shape[3] * 2 + 0.6), squeeze=False)
    for i in range(n):
        for ax, img, title in zip(axes[i], (data.val.images[i].permute(1, 2, 0).numpy(), colour(data.val.masks[i].numpy()), colour(pred[i])),
                                  ("image", "ground truth", "prediction")):
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Every flag and the output folder are checked before any work, and the folder is only made once
    # there is something to put in it: a refused or interrupted command leaves nothing behind.
    require_at_least(args.epochs, "--epochs", 1)
    require_at_least(args.batch_size, "--batch-size", 1)
    require_positive(args.lr, "--lr")
    require_at_least(args.seed, "--seed", 0)
    device = parse_device(args.device)
    out = check_out_folder(args.out, "--out")
    spec = ArchSpec.from_yaml(args.arch)
    h, w = parse_size(args.size) if args.size else (spec.input.height, spec.input.width)
    data = load_data(args.data, h, w, seed=args.seed)
    spec = spec.with_input(height=h, width=w, num_classes=data.info.num_classes, in_channels=data.info.in_channels)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, schedule=args.schedule,
                      seed=args.seed, device=device)
    print(f"training {spec.tag()} at {h}x{w} on {data.info.name} ({len(data.train)} train / {len(data.val)} val)")
    try:
        result = fit(spec, data, cfg, on_epoch=lambda r: print(f"epoch {r.epoch:3d}  loss {r.loss:.4f}  val mIoU {r.miou:.4f}  ({r.seconds:.1f} s)"))
    except TrainingDiverged as exc:
        raise UsageError(f"training diverged: {exc}; try a smaller --lr than {args.lr}") from None
    try:
        write_outputs(out, spec, data, result)
    except OSError as exc:  # checked writable at the start; a full disk or a folder removed meanwhile
        raise UsageError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
    print(f"val mIoU {result.miou:.4f}; wrote {out}/checkpoint.pt, metrics.json, predictions.png")
    return 0


def write_outputs(out: Path, spec: ArchSpec, data: SegData, result: FitResult) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model = result.model
    save_checkpoint(out / "checkpoint.pt", model, spec, result.metrics)
    spec.to_yaml(out / "arch.yaml")
    costs = measure_costs(spec, "cpu", model=model.cpu())
    metrics = {"miou": result.miou, "pixel_acc": result.metrics.pixel_acc,
               "iou": dict(zip(data.info.class_names, result.metrics.iou)),
               "epochs": [asdict(r) for r in result.history], "train_seconds": result.train_seconds,
               "costs": costs.to_dict(), "gmacs_convention": "1 multiply-add = 1, batch 1"}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_prediction_grid(out / "predictions.png", model, data)


if __name__ == "__main__":
    run(main)
