"""Cost measurement: honest GMACs, parameter counts, repeatable memory, latency statistics."""
import dataclasses
import warnings

import pytest

from search_spaces import build_model, load_preset
from search_spaces.spec import CORES, DECODERS, DOWNSAMPLERS
from search_spaces.blocks import TVConv
from trainers.costs import count_deployed_params, count_gmacs, count_params, flop_analysis, measure_peak_memory_mb
from trainers.timing import measure_latency

from helpers import tiny_spec


def test_erfnet_gmacs_match_the_independent_count():
    # 26.6 GMACs: convolutions of the official ERFNet at 512x1024, 20 classes
    spec = load_preset("erfnet", num_classes=20)
    gmacs = count_gmacs(build_model(spec), spec)
    assert abs(gmacs - 26.6) / 26.6 < 0.02
    quarter = dataclasses.replace(spec, ratio=2)
    assert abs(count_gmacs(build_model(quarter), quarter) / gmacs - 0.25) < 0.02


def _unsupported_and_uncalled(spec):
    model = build_model(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = flop_analysis(model, spec)
        analysis.total()
        unsupported = dict(analysis.unsupported_ops())
    # TVConv generators deliberately never run at inference (their kernels are cached)
    generators = {f"{n}.generator" for n, m in model.named_modules() if isinstance(m, TVConv)}
    uncalled = {m for m in analysis.uncalled_modules()
                if not any(m == g or m.startswith(g + ".") for g in generators)
                and any(True for _ in model.get_submodule(m).parameters())}
    return unsupported, uncalled


@pytest.mark.parametrize("core", CORES)
def test_every_core_is_fully_counted(core):
    for tv in (0, 1):
        assert _unsupported_and_uncalled(tiny_spec(core=core, tvconv_from=tv, ratio=2)) == ({}, set())


@pytest.mark.parametrize("decoder", DECODERS)
def test_every_decoder_is_fully_counted(decoder):
    assert _unsupported_and_uncalled(tiny_spec(decoder=decoder)) == ({}, set())


@pytest.mark.parametrize("down", DOWNSAMPLERS)
def test_every_downsampler_is_fully_counted(down):
    assert _unsupported_and_uncalled(tiny_spec(downsampler=down, ratio=4)) == ({}, set())


def test_tvconv_costs_what_the_depthwise_conv_it_replaces_costs():
    # A TVConv applies one k x k kernel per pixel and channel: exactly a depthwise conv's C*k*k*H*W.
    plain, tv = tiny_spec(core="mbconv"), tiny_spec(core="mbconv", tvconv_from=1)
    assert count_gmacs(build_model(plain), plain) == pytest.approx(count_gmacs(build_model(tv), tv), rel=1e-12)


def test_deployed_params_swap_the_generator_for_cached_kernels():
    spec = tiny_spec(core="mbconv", tvconv_from=3)
    model = build_model(spec)
    tvs = [m for m in model.modules() if isinstance(m, TVConv)]
    h, w = spec.stage_size(2)
    expected = count_params(model) + sum(t.channels * 9 * h * w - sum(p.numel() for p in t.parameters()) for t in tvs)
    assert count_deployed_params(model) == expected
    assert len(tvs) == spec.stages[2].depth


def test_cpu_peak_memory_is_repeatable_and_scales_with_resolution():
    small = tiny_spec(height=32, width=32)
    large = tiny_spec(height=64, width=64)
    m = build_model(small)
    runs = {measure_peak_memory_mb(m, small) for _ in range(3)}
    assert len(runs) == 1
    ratio = measure_peak_memory_mb(build_model(large), large) / runs.pop()
    assert 3.0 < ratio < 5.0  # activations grow with pixels (4x), weights excluded


def test_latency_statistics():
    spec = tiny_spec()
    stats = measure_latency(build_model(spec), spec, runs=20, warmup=2)
    assert stats.runs == 20 and stats.threads == 1
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms and stats.iqr_ms >= 0
