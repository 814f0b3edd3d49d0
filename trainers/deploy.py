"""The deployed network: ONNX export checked against PyTorch, ONNX Runtime latency and mIoU.

PyTorch-eager latency at batch 1 on a small net is mostly per-layer Python dispatch, which no
deployment pays; ONNX Runtime runs the exported graph (TVConv with its kernels cached, the weight
generator gone) with graph optimisations, as a phone or car build would. Every session is checked
against PyTorch before it is timed, so what is timed is the same network.
"""
from __future__ import annotations

import io
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from search_spaces import ArchSpec

from .data import Split, to_float
from .device import Device
from .gpu_share import share_of_card
from .metrics import SegMetrics, confusion_matrix
from .timing import LatencyStats, example_input, latency_stats, timing_lock, warm_caches

OPSET = 17


def _export(model: nn.Module, spec: ArchSpec, target) -> None:
    model = model.cpu().eval()
    warm_caches(model, spec)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the input-shape checks, constant at export
        torch.onnx.export(model, (example_input(spec),), target, input_names=["image"], output_names=["logits"],
                          dynamo=False, opset_version=OPSET)


def onnx_bytes(model: nn.Module, spec: ArchSpec) -> bytes:
    """The model as an ONNX graph at batch 1 and the spec's input size, TVConv kernels cached."""
    buffer = io.BytesIO()
    _export(model, spec, buffer)
    return buffer.getvalue()


def timing_session(model: nn.Module, spec: ArchSpec, device: str | Device = "cpu", threads: int = 1):
    """A session on the exported graph. A graph over protobuf's 2 GiB limit (TVConv's per-pixel
    kernels at a large deployment size) goes through a temporary file with its weights beside it."""
    try:
        return session(onnx_bytes(model, spec), device, threads)
    except RuntimeError as exc:
        if "2GiB" not in str(exc):
            raise
    with tempfile.TemporaryDirectory() as folder:  # ONNX Runtime reads the weights when the session starts
        path = Path(folder) / "model.onnx"
        _export(model, spec, str(path))
        return session(path, device, threads)


def providers(device: str | Device) -> list:
    """ONNX Runtime's execution providers for `device`: CUDA's where it is installed, else the CPU's.

    TF32 is off on CUDA: the session must compute the float32 network that PyTorch checks it
    against (TF32 convolutions miss the 1e-4 check), and a deployment that wants TF32 says so.
    """
    import onnxruntime as ort

    device = Device.of(device)
    if device.is_cuda:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("device cuda: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
        options = {"device_id": device.index, "use_tf32": 0}
        share = share_of_card(device) if torch.cuda.is_available() else 1.0
        if share < 1:  # its arena is outside torch's cap
            total = torch.cuda.get_device_properties(device.index).total_memory
            options.update(gpu_mem_limit=int(share * total), arena_extend_strategy="kSameAsRequested")
        return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def probe_provider(device: str | Device) -> None:
    """Open a session of a one-convolution graph on `device`; RuntimeError if its provider is not active."""
    import onnxruntime as ort

    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(nn.Conv2d(3, 4, 3), (torch.zeros(1, 3, 8, 8),), buffer, input_names=["image"],
                          dynamo=False, opset_version=OPSET)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    check_active_provider(ort.InferenceSession(buffer.getvalue(), sess_options=opts, providers=providers(device)), device)


def check_active_provider(sess, device: str | Device) -> None:
    """A CUDA session whose provider failed to load runs on the CPU: its figures would be labelled
    cuda but be the CPU's, so that is an error here, never a silent fallback."""
    active = sess.get_providers()
    if Device.of(device).is_cuda and (not active or active[0] != "CUDAExecutionProvider"):
        raise RuntimeError(f"device {device}: ONNX Runtime's CUDA provider is installed but did not load "
                           f"(the session runs on {', '.join(active) or 'nothing'}); check the CUDA and cuDNN "
                           "libraries onnxruntime-gpu needs, or use --latency-backend torch")


def available_providers() -> list[str]:
    """ONNX Runtime's execution providers on this machine; which backend serves which device is
    `trainers.costs.BACKENDS`."""
    import onnxruntime as ort

    return ort.get_available_providers()


def session(graph: bytes | str | Path, device: str | Device = "cpu", threads: int = 1):
    """An inference session at a fixed thread count, every graph optimisation on."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    source = str(graph) if isinstance(graph, (str, Path)) else graph
    sess = ort.InferenceSession(source, sess_options=opts, providers=providers(device))
    check_active_provider(sess, device)
    return sess


def max_difference(model: nn.Module, spec: ArchSpec, sess, tol: float = 1e-4) -> float:
    """max |ONNX Runtime - PyTorch| on the example input, relative to the largest logit when that
    is above 1 (float32 rounding grows with magnitude); RuntimeError beyond `tol`."""
    x = example_input(spec)
    with torch.inference_mode():
        expected = model.cpu().eval()(x).numpy()
    got = sess.run(None, {"image": x.numpy()})[0]
    diff = float(np.abs(got - expected).max()) / max(1.0, float(np.abs(expected).max()))
    if not diff <= tol:
        raise RuntimeError(f"ONNX Runtime output differs from PyTorch by {diff:.2e} (> {tol}, relative to the largest logit)")
    return diff


def export_onnx(model: nn.Module, spec: ArchSpec, path: Path, tol: float = 1e-4) -> float:
    """Write the ONNX file; returns its max difference from PyTorch (checked with ONNX Runtime)."""
    graph = onnx_bytes(model, spec)
    diff = max_difference(model, spec, session(graph), tol)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(graph)
    tmp.replace(path)
    return diff


def measure_onnx_latency(model: nn.Module, spec: ArchSpec, device: str | Device = "cpu", warmup: int = 10,
                         runs: int = 50, threads: int = 1) -> LatencyStats:
    """Batch-1 ONNX Runtime latency of the exported graph (checked against PyTorch first).

    Input and output stay bound on the session's device (IO binding), so a timed run is the
    network alone, not also a copy of the logits back to the host.
    """
    import onnxruntime as ort

    device = Device.of(device)
    sess = timing_session(model, spec, device, threads)
    max_difference(model, spec, sess)
    kind, index = device.kind, device.index
    binding = sess.io_binding()
    binding.bind_ortvalue_input("image", ort.OrtValue.ortvalue_from_numpy(example_input(spec).numpy(), kind, index))
    binding.bind_output("logits", kind, index)
    times = []
    with timing_lock(device) as lock, lock.exclusive():  # on a shared GPU: nothing else runs on it meanwhile
        for _ in range(warmup):
            sess.run_with_iobinding(binding)
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()  # the device has finished when this returns
            times.append((time.perf_counter_ns() - t0) / 1e6)
    return latency_stats(times, str(device), threads)


def onnx_miou(sess, split: Split, num_classes: int, ignore_index: int = 255) -> SegMetrics:
    """Validation metrics of an ONNX Runtime session (batch 1), as `trainers.train.evaluate` computes them."""
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for i in range(len(split)):
        x = to_float(split.images[i:i + 1]).numpy()
        pred = torch.from_numpy(sess.run(None, {"image": x})[0]).argmax(1)
        cm += confusion_matrix(pred, split.masks[i:i + 1], num_classes, ignore_index)
    return SegMetrics.from_confusion(cm)
