"""Every registered block, in every combination of the space's axes, builds, runs and trains."""
import itertools

import pytest
import torch

from search_spaces import build_model
from search_spaces.registry import CORES, DECODERS, DOWNSAMPLERS
from search_spaces.spec import CORES as SPEC_CORES, DECODERS as SPEC_DECODERS, DOWNSAMPLERS as SPEC_DOWNSAMPLERS
from search_spaces.spec import RATIOS, TVCONV_DEPTHS

from helpers import tiny_spec


def test_registries_match_the_space_choices():
    assert set(CORES) == set(SPEC_CORES)
    assert set(DECODERS) == set(SPEC_DECODERS)
    assert set(DOWNSAMPLERS) == set(SPEC_DOWNSAMPLERS)


def _check_forward_backward(spec):
    model = build_model(spec).train()
    x = torch.randn(2, spec.input.in_channels, spec.input.height, spec.input.width)
    y = model(x)
    assert y.shape == (2, spec.input.num_classes, spec.input.height, spec.input.width), spec.tag()
    assert torch.isfinite(y).all(), spec.tag()
    y.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{spec.tag()}: no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), f"{spec.tag()}: non-finite gradient in {name}"
    model.eval()
    with torch.inference_mode():
        assert model(x[:1]).shape == (1, spec.input.num_classes, spec.input.height, spec.input.width)


@pytest.mark.parametrize("core", SPEC_CORES)
def test_every_combination_builds_runs_and_gets_gradients(core):
    """core x decoder x downsampler x ratio x TVConv depth: all 1008 combinations."""
    for decoder, down, ratio, tv in itertools.product(SPEC_DECODERS, SPEC_DOWNSAMPLERS, RATIOS, TVCONV_DEPTHS):
        _check_forward_backward(tiny_spec(core=core, decoder=decoder, downsampler=down, ratio=ratio, tvconv_from=tv))


@pytest.mark.parametrize("core", SPEC_CORES)
def test_kernel_5_and_non_square_input(core):
    _check_forward_backward(tiny_spec(core=core, kernel=5, height=32, width=64, dilations=(2, 4)))


def test_eda_grows_channels_by_growth_per_block():
    spec = tiny_spec(core="eda")
    model = build_model(spec)
    # stage widths 8, 12, 16 with depths 1, 1, 2 and growth 4
    assert [s.out_channels for s in model.stages] == [8 + 4, 12 + 4, 16 + 2 * 4]


def test_wrong_input_size_is_refused():
    model = build_model(tiny_spec(ratio=2))
    with pytest.raises(ValueError, match="multiple of 16"):
        model(torch.randn(1, 3, 40, 40))
