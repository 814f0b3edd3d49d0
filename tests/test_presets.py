"""The seeds' hand-designed networks: faithful layer plans, published parameter counts."""
import pytest
import torch

from search_spaces import build_model, load_preset
from search_spaces.blocks import CoreArgs
from search_spaces.registry import CORES


def n_params(module):
    return sum(p.numel() for p in module.parameters())


# Published totals at Cityscapes' 19 classes (papers' tables).
PAPER_PARAMS = {"erfnet": 2.1e6, "edanet": 0.68e6, "esnet": 1.66e6, "lednet": 0.94e6}


@pytest.mark.parametrize("name", PAPER_PARAMS)
def test_preset_parameter_count_matches_the_paper(name):
    count = n_params(build_model(load_preset(name, num_classes=19)))
    assert abs(count - PAPER_PARAMS[name]) / PAPER_PARAMS[name] < 0.05, count


def test_erfnet_matches_the_official_implementation_exactly():
    # Official ERFNet at 20 classes has 2,066,836 parameters, of which its encoder-only 1x1
    # classifier (128*20 + 20 = 2,580) is unused by the full network.
    assert n_params(build_model(load_preset("erfnet", num_classes=20))) == 2_066_836 - 2_580


def test_nb1d_hand_count():
    c, k = 64, 3
    # four asymmetric convs with bias, two BatchNorms (weight + bias)
    expected = 4 * (c * c * k + c) + 2 * 2 * c
    assert n_params(CORES["nb1d"](CoreArgs(c, k, 1, 0.0))) == expected


def test_ssnbt_hand_count():
    c, h = 128, 64
    # two halves of four asymmetric convs with bias and two BatchNorms each
    expected = 2 * (4 * (h * h * 3 + h) + 2 * 2 * h)
    assert n_params(CORES["ssnbt"](CoreArgs(c, 3, 1, 0.0))) == expected


@pytest.mark.parametrize("name", PAPER_PARAMS)
def test_preset_runs_at_a_small_study_size(name):
    spec = load_preset(name, height=64, width=128, num_classes=8)
    with torch.inference_mode():
        assert build_model(spec).eval()(torch.randn(1, 3, 64, 128)).shape == (1, 8, 64, 128)
