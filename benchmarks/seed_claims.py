"""The seed papers' claims, tested by controlled ablations of one network on the embedded data.

Every variant is the ERFNet preset with exactly one thing changed, trained at the reference
protocol (64x128, 20 epochs) with 2 seeds (mean and spread of mIoU reported):
  - TVConv (Chen et al. 2022: deep layers gain, shallow ones lose): a TVConv residual block in the
    deepest stage only, in the shallowest stage only, none.
  - Decoders on the same encoder: ERFNet's, bilinear, DUpsampling (Tian et al. 2019: as good as
    bilinear-with-more-capacity at a fraction of the decoder's cost) - mIoU and decoder GMACs.
  - Holistic decomposition (r = 1, 2, 4): peak activation memory should fall about r^2 times;
    what does mIoU pay?
  - ERFNet's asymmetric 3x1+1x3 pairs vs plain 3x3 convolutions (Romera et al. 2018: 33 % fewer
    parameters and MACs at kernel 3, same accuracy).
Trainings run two at a time (one thread each); each finished one is appended to a CSV, so a
re-run resumes.

    python benchmarks/seed_claims.py [--quick]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, machine, run_logged, save  # noqa: E402
from search_spaces import ArchSpec, DecoderSpec, build_model  # noqa: E402
from search_spaces.blocks.factorized import NonBottleneck1D  # noqa: E402
from search_spaces.blocks.tvconv import TVResidual  # noqa: E402

PRESET = Path(__file__).resolve().parent.parent / "search_spaces" / "presets" / "erfnet.yaml"
# variant -> (ablation, how it differs from the ERFNet preset)
VARIANTS = {
    "erfnet": ("(base)", "the ERFNet preset"),
    "tv_deep": ("TVConv", "TVConv residual block in stage 3 only"),
    "tv_shallow": ("TVConv", "TVConv residual block in stage 1 only"),
    "dec_bilinear": ("decoder", "bilinear decoder (64-channel refinement)"),
    "dec_dupsample": ("decoder", "DUpsampling decoder (N = 64)"),
    "r2": ("decomposition", "holistic decomposition r = 2"),
    "r4": ("decomposition", "holistic decomposition r = 4"),
    "conv3x3": ("asymmetric", "every 3x1+1x3 pair a 3x3 conv"),
}


class NonBottleneck3x3(nn.Module):
    """ERFNet's non-bottleneck-1D with each kx1+1xk pair replaced by one kxk conv (the block the
    ERFNet paper factorises)."""

    def __init__(self, c: int, k: int, dilation: int, drop: nn.Module):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, k, padding=k // 2), nn.BatchNorm2d(c, eps=1e-3)
        self.conv2 = nn.Conv2d(c, c, k, padding=dilation * (k // 2), dilation=dilation)
        self.bn2, self.drop = nn.BatchNorm2d(c, eps=1e-3), drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.drop(self.bn2(self.conv2(y))))


def variant_spec(name: str, height: int, width: int, num_classes: int) -> ArchSpec:
    base = ArchSpec.from_yaml(PRESET).with_input(height=height, width=width, num_classes=num_classes)
    changes = {"tv_deep": {"tvconv_from": 3}, "tv_shallow": {"tvconv_from": 1},
               "dec_bilinear": {"decoder": DecoderSpec(kind="bilinear", width=64)},
               "dec_dupsample": {"decoder": DecoderSpec(kind="dupsample", width=64)},
               "r2": {"ratio": 2}, "r4": {"ratio": 4}}.get(name, {})
    return dataclasses.replace(base, name=name, **changes)


def variant_model(name: str, spec: ArchSpec) -> nn.Module:
    """The variant's network: built from its spec, then the one surgery the spec cannot say."""
    model = build_model(spec)
    if name == "tv_shallow":  # tvconv_from = 1 puts a TVConv block in every stage: keep stage 1's only
        for stage in list(model.stages)[1:]:
            for i, layer in enumerate(stage):
                if isinstance(layer, TVResidual):
                    stage[i] = nn.Identity()
    if name == "conv3x3":
        for parent in list(model.modules()):
            for child_name, child in parent.named_children():
                if isinstance(child, NonBottleneck1D):
                    c, k = child.out_channels, child.conv1_v.kernel_size[0]
                    setattr(parent, child_name, NonBottleneck3x3(c, k, child.conv2_v.dilation[0], child.drop))
    return model


def controlled_init(name: str, spec: ArchSpec, seed: int) -> nn.Module:
    """The variant with the base network's initial weights wherever it has the same layer (name and
    shape): an added module would otherwise shift the random stream and re-draw every later layer,
    so the one change would not be the only difference."""
    torch.manual_seed(seed)
    base = build_model(dataclasses.replace(spec, name="erfnet", tvconv_from=0, ratio=1,
                                           decoder=variant_spec("erfnet", 8, 8, 2).decoder)).state_dict()
    torch.manual_seed(seed)
    model = variant_model(name, spec)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in base.items() if k in own and own[k].shape == v.shape}, strict=False)
    return model


def block_params(c: int = 64, k: int = 3) -> tuple[int, int]:
    """Convolution weights of one block of width c: (asymmetric pairs, 3x3 convs) - the claim's unit."""
    asym = 4 * (c * c * k)  # two kx1 + two 1xk
    full = 2 * (c * c * k * k)
    return asym, full


def costs(name: str, spec: ArchSpec) -> dict:
    from trainers.costs import count_params, flop_analysis, measure_peak_memory_mb

    model = variant_model(name, spec).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = flop_analysis(model, spec)
        total, decoder = analysis.total() / 1e9, analysis.by_module().get("decoder", 0) / 1e9
    big = spec.with_input(height=512, width=1024)
    return {"params": count_params(model), "gmacs": total, "decoder_gmacs": decoder,
            "peak_mem_mb": measure_peak_memory_mb(model, spec),
            "peak_mem_mb_512x1024": measure_peak_memory_mb(variant_model(name, big).eval(), big)}


def train(job: dict) -> dict:
    """One training in a worker process (one thread)."""
    from trainers.data import load_data
    from trainers.train import TrainConfig, fit, prepare_model

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    data = load_data(None, job["height"], job["width"], seed=0)
    spec = variant_spec(job["variant"], job["height"], job["width"], data.info.num_classes)
    model = controlled_init(job["variant"], spec, job["seed"])
    if job["variant"] == "dec_dupsample":  # DUpsampling's W is fitted to the training labels
        fitted = prepare_model(spec, data, job["seed"])
        model.decoder.set_reconstruction(fitted.decoder.basis, fitted.decoder.mean)
    torch.manual_seed(job["seed"])  # the same dropout stream for every variant
    result = fit(spec, data, TrainConfig(epochs=job["epochs"], seed=job["seed"]), model=model)
    return {"variant": job["variant"], "seed": job["seed"], "miou": result.miou,
            "seconds": result.train_seconds + result.eval_seconds}


def summarise(runs: pd.DataFrame, cost: pd.DataFrame) -> pd.DataFrame:
    g = runs.groupby("variant")["miou"]
    table = cost.set_index("variant").join(pd.DataFrame({"miou": g.mean(), "miou_sd": g.std(ddof=1), "seeds": g.size()}))
    base = table.loc["erfnet"]
    table["miou_vs_erfnet"] = table["miou"] - base["miou"]
    table["params_vs_erfnet"] = table["params"] / base["params"]
    table["mem_vs_erfnet_512x1024"] = table["peak_mem_mb_512x1024"] / base["peak_mem_mb_512x1024"]
    table.insert(0, "ablation", [VARIANTS[v][0] for v in table.index])
    table.insert(1, "change", [VARIANTS[v][1] for v in table.index])
    return table.reset_index()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="64x128")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="32x64, 2 epochs (development)")
    args = p.parse_args()
    warnings.simplefilter("ignore")
    if args.quick:
        args.size, args.epochs = "32x64", 2
    h, w = map(int, args.size.split("x"))
    suffix = "_quick" if args.quick else ""
    log = RESULTS / f"seed_claims_runs_{args.size}_{args.epochs}ep.csv"  # resumes only the same protocol
    done = pd.read_csv(log) if log.exists() else pd.DataFrame(columns=["variant", "seed"])
    have = set(zip(done["variant"], done["seed"]))
    jobs = [{"variant": v, "seed": s, "height": h, "width": w, "epochs": args.epochs}
            for v in VARIANTS for s in range(args.seeds) if (v, s) not in have]
    print(f"{len(VARIANTS)} variants x {args.seeds} seeds at {args.size} x {args.epochs} epochs: "
          f"{len(jobs)} trainings to run  [{machine()}]", flush=True)
    run_logged(train, jobs, log, args.workers)
    from trainers.data import load_data
    classes = load_data(None, h, w, seed=0, n_train=2, n_val=2).info.num_classes
    cost = pd.DataFrame([{"variant": v, **costs(v, variant_spec(v, h, w, classes))} for v in VARIANTS])
    runs = pd.read_csv(log)
    runs = runs[runs["seed"] < args.seeds]
    asym, full = block_params()
    print(f"protocol: {args.size}, {args.epochs} epochs, seeds 0..{args.seeds - 1}; one 64-channel block's conv "
          f"weights: asymmetric {asym:,} vs 3x3 {full:,} ({1 - asym / full:.1%} fewer)")
    save(summarise(runs, cost), f"seed_claims{suffix}")


if __name__ == "__main__":
    main()
