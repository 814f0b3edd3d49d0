"""ONNX Runtime as a latency backend: the timed graph is the PyTorch network, TVConv with cached kernels."""
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from search_spaces import build_model
from search_spaces.blocks import TVConv
from trainers import costs
from trainers.costs import default_backend, measure_costs, resolve_backend
from trainers.deploy import max_difference, measure_onnx_latency, onnx_bytes, onnx_miou, session
from trainers.data import load_data
from trainers.train import evaluate

from helpers import tiny_spec


def _trained_like(model):
    """Move every weight off its initial value, so TVConv's kernels vary over space."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("decoder", ["bilinear", "erfnet", "apn", "dupsample"])
def test_onnx_graph_equals_pytorch(decoder):
    spec = tiny_spec(decoder=decoder, tvconv_from=2, ratio=2)
    model = _trained_like(build_model(spec))
    assert max_difference(model, spec, session(onnx_bytes(model, spec)), tol=1e-5) < 1e-5


def test_tvconv_is_exported_as_its_cached_kernels_without_the_generator():
    spec = tiny_spec(core="nb1d", tvconv_from=1)
    model = _trained_like(build_model(spec))
    graph = onnx.load_from_string(onnx_bytes(model, spec))
    inits = [numpy_helper.to_array(t) for t in graph.graph.initializer]
    inits += [numpy_helper.to_array(n.attribute[0].t) for n in graph.graph.node if n.op_type == "Constant"]
    assert not any("generator" in n.name for n in graph.graph.node)
    tvs = [m for m in model.modules() if isinstance(m, TVConv)]
    assert tvs
    for tv in tvs:
        kernels = tv.cached_kernels().numpy()
        assert not np.allclose(kernels, kernels[:, :, :1, :1])  # really translation-variant
        assert any(a.shape == kernels.shape and np.allclose(a, kernels) for a in inits)
        assert not any(a.shape == tuple(tv.affinity.shape) for a in inits)  # no affinity maps: no generator


def test_onnx_latency_is_measured_after_the_graph_check():
    spec = tiny_spec(tvconv_from=2)
    stats = measure_onnx_latency(build_model(spec), spec, runs=12, warmup=2, threads=1)
    assert stats.runs == 12 and stats.threads == 1
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms and stats.iqr_ms >= 0
    costs = measure_costs(spec, runs=5, warmup=1, backend="onnxruntime")
    assert costs.latency_ms > 0
    with pytest.raises(ValueError, match="latency backend 'tflite'"):
        measure_costs(spec, runs=5, backend="tflite")


def test_auto_prefers_the_exported_graph_where_onnx_runtime_serves_the_device(monkeypatch):
    assert default_backend("cpu", []) == "onnxruntime"
    assert default_backend("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == "onnxruntime"
    assert default_backend("cuda", ["CPUExecutionProvider"]) == "torch"
    monkeypatch.setattr(costs, "available_providers", lambda: ["CPUExecutionProvider"])  # a CPU-only build
    assert resolve_backend("auto", "cuda") == "torch" and resolve_backend("torch", "cuda") == "torch"
    assert resolve_backend("onnxruntime", "cpu") == "onnxruntime"
    with pytest.raises(ValueError) as err:
        resolve_backend("onnxruntime", "cuda", " for the GPU trials")
    assert str(err.value) == ("--latency-backend onnxruntime: this onnxruntime has no CUDA provider for the GPU trials "
                              "(install onnxruntime-gpu, or use --latency-backend torch)")


def test_onnx_miou_equals_the_pytorch_evaluation():
    data = load_data(None, 32, 64, seed=0, n_train=4, n_val=6)
    spec = tiny_spec(height=32, width=64, num_classes=data.info.num_classes)
    model = _trained_like(build_model(spec))
    want = evaluate(model, data.val, data.info.num_classes, data.info.ignore_index)
    got = onnx_miou(session(onnx_bytes(model, spec)), data.val, data.info.num_classes, data.info.ignore_index)
    assert got.miou == pytest.approx(want.miou, abs=1e-6)


def test_the_workers_backend_comes_from_the_one_table(monkeypatch):
    import dataclasses

    import pytest

    from nas import runner

    from nas.search import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["--address", "head:6379"]))

    def settled(device, requested, providers):
        facts = {"cuda": True, "providers": providers}
        monkeypatch.setattr(runner, "on_worker", lambda cfg, fn, *a: facts)
        settings = dataclasses.replace(cfg.settings, device=device, latency_backend=requested)
        return runner._settle_backend(cfg.replace(gpus_per_trial=1.0, settings=settings)).settings.latency_backend

    assert settled("cuda", "auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == "onnxruntime"
    assert settled("cuda", "auto", ["CPUExecutionProvider"]) == "torch"
    assert settled("cpu", "auto", ["CPUExecutionProvider"]) == "onnxruntime"
    assert settled("cuda", "torch", ["CPUExecutionProvider"]) == "torch"
    with pytest.raises(runner.ClusterError, match="the workers' onnxruntime has no CUDA provider"):
        settled("cuda", "onnxruntime", ["CPUExecutionProvider"])
