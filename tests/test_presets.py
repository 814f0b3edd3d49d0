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


# Independent counts of the official layer plans (xiaoyufenfei/ESNet model/ESNet.py,
# xiaoyufenfei/LEDNet train/lednet.py), written from the papers' code, not from our blocks.
def conv(cin, cout, kh, kw, bias=True):  # nn.Conv2d and nn.ConvTranspose2d alike
    return cin * cout * kh * kw + (cout if bias else 0)


def bn(c):  # affine weight + bias; running statistics are buffers
    return 2 * c


def down(cin, cout):  # ENet/ERFNet downsampler: conv3x3 s2 to cout - cin, concat maxpool, BN
    return conv(cin, cout - cin, 3, 3) + bn(cout)


def fcu(c, k):  # kx1, 1xk, BN, kx1 (dilated), 1xk (dilated), BN
    return 2 * (conv(c, c, k, 1) + conv(c, c, 1, k) + bn(c))


def pfcu(c):  # 3x1, 1x3, bn1; three dilated 3x1/1x3 branches sharing bn2
    return conv(c, c, 3, 1) + conv(c, c, 1, 3) + bn(c) + 3 * (conv(c, c, 3, 1) + conv(c, c, 1, 3)) + bn(c)


def ssnbt(c):  # two halves of c/2 channels: 3x1, 1x3, bn1, 3x1, 1x3, bn2
    h = c // 2
    return 2 * (2 * (conv(h, h, 3, 1) + conv(h, h, 1, 3) + bn(h)))


def cbr(cin, cout, k):  # LEDNet's Conv2dBnRelu: its conv keeps the bias
    return conv(cin, cout, k, k) + bn(cout)


def official_esnet(n):
    encoder = down(3, 16) + 3 * fcu(16, 3) + down(16, 64) + 2 * fcu(64, 5) + down(64, 128) + 3 * pfcu(128)
    decoder = (conv(128, 64, 3, 3) + bn(64) + 2 * fcu(64, 5)  # UpsamplerBlock 128 -> 64, 2 x FCU
               + conv(64, 16, 3, 3) + bn(16) + 2 * fcu(16, 3)  # UpsamplerBlock 64 -> 16, 2 x FCU
               + conv(16, n, 2, 2))  # 2x2 transposed conv to the classes
    return encoder + decoder + conv(128, n, 1, 1)  # + encoder_output_conv (encoder-only mode)


def official_lednet(n):
    encoder = down(3, 32) + 3 * ssnbt(32) + down(32, 64) + 2 * ssnbt(64) + down(64, 128) + 8 * ssnbt(128)
    apn = (cbr(128, n, 1) + cbr(128, n, 1)  # global-pooling and middle branches
           + cbr(128, 1, 7) + cbr(1, 1, 5) + 2 * cbr(1, 1, 3)  # down1, down2, down3
           + cbr(1, 1, 5) + cbr(1, 1, 7))  # conv2, conv1
    return encoder + apn + conv(128, n, 1, 1)  # + the encoder's output_conv (encoder-only mode)


@pytest.mark.parametrize("classes", [19, 20])
def test_esnet_matches_the_official_implementation_exactly(classes):
    # Official ESNet: 1,661,522 parameters at 19 classes (the paper's 1.66 M); our preset omits its
    # encoder_output_conv (128*n + n = 2,451 at 19), which only the encoder-only pretraining mode uses.
    unused = conv(128, classes, 1, 1)
    assert official_esnet(19) == 1_661_522
    assert n_params(build_model(load_preset("esnet", num_classes=classes))) == official_esnet(classes) - unused


@pytest.mark.parametrize("classes", [19, 20])
def test_lednet_matches_the_official_implementation_exactly(classes):
    # Official LEDNet: 925,663 parameters at 20 classes (the paper's 0.94 M). Its APN hard-codes 20
    # outputs (Cityscapes' 19 + void), so at 19 classes we count the plan with n = 19 outputs, as the
    # paper means. Our preset omits the encoder's output_conv (128*n + n = 2,580 at 20), used only in
    # encoder-only pretraining.
    unused = conv(128, classes, 1, 1)
    assert official_lednet(20) == 925_663
    assert n_params(build_model(load_preset("lednet", num_classes=classes))) == official_lednet(classes) - unused


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


def test_pfcu_hand_count():
    c = 128
    # a 3x1/1x3 pair with BN, then three dilated branches of two convs with bias sharing ONE BatchNorm
    expected = 8 * (c * c * 3 + c) + 2 * 2 * c
    assert n_params(CORES["pfcu"](CoreArgs(c, 3, 2, 0.3))) == expected


def test_ssnbt_halves_end_in_batchnorm_not_relu():
    # Official SS-nbt: the only ReLU after bn2 is the one on input + concat(halves).
    torch.manual_seed(0)
    block = CORES["ssnbt"](CoreArgs(8, 3, 1, 0.0)).eval()
    with torch.inference_mode():
        assert block.left(torch.randn(1, 4, 8, 8)).min() < 0


@pytest.mark.parametrize("name", PAPER_PARAMS)
def test_preset_runs_at_a_small_study_size(name):
    spec = load_preset(name, height=64, width=128, num_classes=8)
    with torch.inference_mode():
        assert build_model(spec).eval()(torch.randn(1, 3, 64, 128)).shape == (1, 8, 64, 128)
