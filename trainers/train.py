"""Training: `fit(spec, data, config)` trains one network and reports validation mIoU per epoch."""
from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces import ArchSpec, build_model
from search_spaces.blocks.dupsample import DUpsamplingDecoder, fit_reconstruction

from .batches import TrainBatches, to_device
from .data import SegData, Split, to_float
from .device import Device
from .gpu_share import DeviceLock
from .metrics import SegMetrics, confusion_matrix

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# fp16 steps whose loss overflowed are skipped; this many in a row means the run has diverged.
MAX_SKIPPED_IN_ROW = 10


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the trial failed, with the epoch and step in the message."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 4
    batch_size: int = 16
    lr: float = 4e-3
    weight_decay: float = 1e-4
    schedule: str = "poly"  # or "cosine"
    augment: bool = True
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # CPU threads for this training; None keeps torch's setting
    precision: str = "auto"  # fp32, bf16 or fp16 autocast; auto: bf16 where the GPU has it, fp16 on older GPUs, fp32 on CPU

    def __post_init__(self) -> None:
        if self.schedule not in ("poly", "cosine"):
            raise ValueError(f"schedule: {self.schedule!r} is not allowed; one of ['poly', 'cosine']")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: {self.precision!r} is not allowed; one of {list(PRECISIONS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs {self.epochs} and batch_size {self.batch_size} must be >= 1")


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    loss: float
    miou: float
    seconds: float


@dataclass
class FitResult:
    metrics: SegMetrics
    history: list[EpochRecord] = field(default_factory=list)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    stopped_early: bool = False
    # CUDA allocator peak of the training (weights, gradients, optimiser state, activations, batches)
    # above what was allocated before it: the resident uint8 split is not the training's memory
    peak_train_mem_mb: float | None = None
    precision: str = "fp32"  # what `auto` resolved to
    skipped_steps: int = 0  # fp16 steps skipped for an overflow (loss or gradients)
    model: nn.Module | None = None  # the trained network, in eval mode

    @property
    def miou(self) -> float:
        return self.metrics.miou


def resolve_precision(precision: str, device: str | Device) -> str:
    """What `auto` means on `device`: bf16 needs no loss scaling, so it is preferred where the GPU
    supports it; fp16 with a gradient scaler on older GPUs; fp32 on the CPU, even one with native
    bf16: there a step was 0.9-1.6x fp32's (results/bench/train_step*.csv), so `--precision bf16` is
    the user's choice, not a silent change of the protocol."""
    if precision != "auto":
        return precision
    device = Device.of(device)
    if device.is_cuda and torch.cuda.is_available():
        with torch.cuda.device(device.torch):  # torch answers for the current card
            return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "fp32"


def memory_format(device: Device, precision: str) -> torch.memory_format:
    """channels_last for fp32 on a CPU: oneDNN's convolutions take NHWC without reordering on each
    call (a step 1.0-1.5x faster, results/bench/train_step*.csv). Not with bf16: there oneDNN's
    weight gradient of some dilated convolutions comes out NaN (tests/test_train.py holds a case).
    Contiguous on GPUs, where no layout has been measured yet."""
    return torch.channels_last if not device.is_cuda and precision == "fp32" else torch.contiguous_format


def _lr_factor(schedule: str, step: int, total: int) -> float:
    progress = step / max(1, total)
    if schedule == "poly":
        return (1 - progress) ** 0.9
    return 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, num_classes: int, ignore_index: int = 255,
             batch_size: int = 32, device: str | Device = "cpu") -> SegMetrics:
    """Validation metrics at full label resolution."""
    device = Device.of(device)
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    with torch.inference_mode():
        for i in range(0, len(split), batch_size):
            x = to_float(to_device(split.images[i:i + batch_size], device))  # uint8 crosses, not float
            pred = model(x).argmax(1).cpu()
            cm += confusion_matrix(pred, split.masks[i:i + batch_size], num_classes, ignore_index)
    return SegMetrics.from_confusion(cm)


def prepare_model(spec: ArchSpec, data: SegData, seed: int, reconstruction=None) -> nn.Module:
    """Seeded initialisation; DUpsampling's W fitted on this data's training labels, or the
    `reconstruction` (basis, mean) given — a search fits each W once in its driver."""
    torch.manual_seed(seed)
    model = build_model(spec)
    if isinstance(model.decoder, DUpsamplingDecoder):
        d = model.decoder
        d.set_reconstruction(*(reconstruction if reconstruction is not None else fit_reconstruction(
            data.train.masks, d.num_classes, d.ratio, d.n, data.info.ignore_index, seed)))
    return model


def fit(spec: ArchSpec, data: SegData, config: TrainConfig = TrainConfig(),
        on_epoch: Callable[[EpochRecord], bool | None] | None = None, model: nn.Module | None = None,
        reconstruction=None, evaluate_every_epoch: bool = True) -> FitResult:
    """Train `spec` on `data.train`, evaluating on `data.val` after every epoch.

    `on_epoch` sees each epoch's record; returning False stops training (early stopping). Without
    `evaluate_every_epoch`, only the last epoch is evaluated (the others' records carry mIoU nan):
    evaluation changes no weight and draws no random number, so the final mIoU is the same.
    """
    _check_compatible(spec, data)
    if config.threads:
        torch.set_num_threads(config.threads)
    device, info = Device.parse(config.device), data.info
    batches = TrainBatches(data.train, device)
    if device.is_cuda:  # the peak is the training's: the resident split, put there first, is not part of it
        torch.cuda.reset_peak_memory_stats(device.torch)
        before = torch.cuda.memory_allocated(device.torch)
    precision = resolve_precision(config.precision, device)
    layout = memory_format(device, precision)
    model = (model or prepare_model(spec, data, config.seed, reconstruction)).to(device.torch, memory_format=layout)
    # Fused on the CPU: one kernel over every parameter instead of a Python loop over them, which took up
    # to 17 % of a small searched net's 32x64 step (benchmarks/train_step.py); the GPU keeps torch's default.
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                            fused=True if not device.is_cuda else None)
    gen = torch.Generator().manual_seed(config.seed)  # on the CPU: the same draws whatever the device
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    total, step = steps_per_epoch * config.epochs, 0
    scaler = torch.amp.GradScaler(device.kind, enabled=precision == "fp16")
    lock = DeviceLock(device)  # steps shared, so a neighbour's latency timing never overlaps them
    # A loss read on the host makes it wait for the step's kernels; on a GPU the losses stay there
    # until the epoch ends (fp16's scaler reads its overflow check every step all the same).
    read_each_step = not device.is_cuda or scaler.is_enabled()
    result = FitResult(metrics=SegMetrics(float("nan"), float("nan"), ()), precision=precision)
    in_row = 0
    try:  # a step holds the GPU lock past its end (no host sync per step): let go however fit ends
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            model.train()
            order = torch.randperm(len(data.train), generator=gen)
            losses = EpochLosses(device.torch)
            for b in range(steps_per_epoch):
                idx = order[b * config.batch_size:(b + 1) * config.batch_size]
                if len(idx) < 2:  # BatchNorm needs more than one sample
                    continue
                for group in opt.param_groups:
                    group["lr"] = config.lr * _lr_factor(config.schedule, step, total)
                step += 1
                with lock.shared():  # the batch is made on the device too: all of it is the step's GPU work
                    x, y = batches(idx, gen if config.augment else None)
                    x = x.contiguous(memory_format=layout)
                    with _autocast(device.kind, precision):
                        loss = F.cross_entropy(model(x), y, ignore_index=info.ignore_index)
                    losses.add(loss, b)
                    value = loss.item() if read_each_step else None
                    stepped = value is None or math.isfinite(value)
                    if stepped:
                        opt.zero_grad(set_to_none=True)
                        scale = scaler.get_scale() if scaler.is_enabled() else 1.0
                        scaler.scale(loss).backward()
                        scaler.step(opt)
                        scaler.update()
                        stepped = not scaler.is_enabled() or scaler.get_scale() >= scale  # else the gradients overflowed
                if stepped:
                    in_row = 0
                else:
                    in_row += 1
                    if precision != "fp16" or in_row > MAX_SKIPPED_IN_ROW:
                        raise TrainingDiverged(f"loss is {value} at epoch {epoch}, step {b} ({spec.tag()}, {precision})"
                                               if not math.isfinite(value) else
                                               f"gradients overflowed {in_row} steps in a row at epoch {epoch} ({spec.tag()})")
                    result.skipped_steps += 1
            mean_loss, bad_step, bad_value = losses.read()
            if bad_step is not None and precision != "fp16":  # found only now where the losses stayed on the GPU
                raise TrainingDiverged(f"loss is {bad_value} at epoch {epoch}, step {bad_step} ({spec.tag()}, {precision})")
            t1 = time.perf_counter()
            evaluated = evaluate_every_epoch or epoch == config.epochs
            if evaluated:
                with lock.shared():
                    result.metrics = evaluate(model, data.val, info.num_classes, info.ignore_index, device=device)
                lock.let_go()  # the metrics were read on the host, so this waits for nothing; the report may block
            t2 = time.perf_counter()
            result.train_seconds += t1 - t0
            result.eval_seconds += t2 - t1
            record = EpochRecord(epoch, mean_loss, result.metrics.miou if evaluated else float("nan"), t2 - t0)
            result.history.append(record)
            if on_epoch is not None and on_epoch(record) is False:
                result.stopped_early = epoch < config.epochs
                break
    finally:
        lock.close()
    if device.is_cuda:
        result.peak_train_mem_mb = (torch.cuda.max_memory_allocated(device.torch) - before) / 2**20
    result.model = model.to(memory_format=torch.contiguous_format).eval()  # exported and timed as users build it
    return result


class EpochLosses:
    """One epoch's training losses, summed where they are computed, read on the host once.

    Float64 sums in step order, so the mean equals the host's sum of `loss.item()` values exactly.
    Non-finite losses are left out of the mean; the first one's step and value are kept.
    """

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.finite = torch.zeros((), dtype=torch.float64, device=device)
        self.bad_step = torch.full((), -1.0, dtype=torch.float64, device=device)
        self.bad_value = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, loss: torch.Tensor, step: int) -> None:
        value = loss.detach().double()
        finite = torch.isfinite(value)
        self.total += torch.where(finite, value, 0.0)
        self.finite += finite
        first = ~finite & (self.bad_step < 0)
        self.bad_step = torch.where(first, float(step), self.bad_step)
        self.bad_value = torch.where(first, value, self.bad_value)

    def read(self) -> tuple[float, int | None, float]:
        """(mean of the finite losses, the first non-finite loss's step or None, its value)."""
        total, finite, step, value = torch.stack((self.total, self.finite, self.bad_step, self.bad_value)).tolist()
        return total / max(1.0, finite), (int(step) if step >= 0 else None), value


def _autocast(device_type: str, precision: str):
    if precision not in AMP_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=AMP_DTYPES[precision])


def _check_compatible(spec: ArchSpec, data: SegData) -> None:
    inp, info = spec.input, data.info
    h, w = data.train.images.shape[-2:]
    if (inp.height, inp.width) != (h, w):
        raise ValueError(f"spec input {inp.height}x{inp.width} differs from the data's {h}x{w}")
    if inp.num_classes != info.num_classes or inp.in_channels != info.in_channels:
        raise ValueError(f"spec has {inp.num_classes} classes / {inp.in_channels} channels; "
                         f"data {info.name!r} has {info.num_classes} / {info.in_channels}")


def checkpoint_bytes(model: nn.Module, spec: ArchSpec, metrics: SegMetrics | None = None) -> bytes:
    """Weights plus the spec that rebuilds them (as plain data, no pickled classes)."""
    payload = {"spec": spec.to_dict(), "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
               "metrics": asdict(metrics) if metrics else None}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def write_checkpoint(path: str | Path, payload: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    tmp.replace(path)


def save_checkpoint(path: str | Path, model: nn.Module, spec: ArchSpec, metrics: SegMetrics | None = None) -> None:
    write_checkpoint(path, checkpoint_bytes(model, spec, metrics))


def load_checkpoint(path: str | Path) -> tuple[ArchSpec, nn.Module]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    spec = ArchSpec.from_dict(payload["spec"])
    model = build_model(spec)
    model.load_state_dict(payload["state_dict"])
    return spec, model.eval()
