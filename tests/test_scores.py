"""Training-free scores: each on a network whose value is worked out by hand, then on real specs."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.spec import DECODERS
from trainers.scores import JACOB_K, NAMES, all_scores, fisher, grad_norm, jacob_cov, naswot, snip, synflow

from helpers import tiny_spec

K = JACOB_K


def _linear(*weights) -> nn.Sequential:
    layers = []
    for w in weights:
        layer = nn.Linear(2, 2, bias=False)
        layer.weight.data = torch.tensor(w, dtype=torch.float32)
        layers.append(layer)
    return nn.Sequential(*layers)


def _conv1x1(*weights, relu=False) -> nn.Sequential:
    """1x1 convolutions with the given (out, in) matrices: per pixel, a linear map."""
    layers = []
    for w in weights:
        w = torch.tensor(w, dtype=torch.float32)
        conv = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=False)
        conv.weight.data = w[:, :, None, None]
        layers += [conv, nn.ReLU()] if relu else [conv]
    return nn.Sequential(*layers)


W1 = [[1.0, -2.0], [3.0, 0.5]]
W2 = [[-1.0, 2.0], [0.5, -3.0]]


def test_synflow_of_a_linear_chain():
    # R = 1ᵀ|W2||W1|1: |W1|1 = (3, 3.5), |W2|(3, 3.5) = (10, 12), R = 22. dR/d|W1|_ij = column sum i
    # of |W2| = (1.5, 5): Σ |W1| ⊙ that = 1.5 + 3 + 15 + 2.5 = 22; likewise 22 for W2 (R is linear
    # in each matrix), so synflow = 44 whatever the input's values (it is replaced by ones).
    assert synflow(_linear(W1, W2), torch.randn(5, 2)) == pytest.approx(44.0)


def test_synflow_bypasses_batchnorm():
    net = _linear(W1, W2)
    net.insert(1, nn.BatchNorm1d(2))  # batch statistics of one all-ones input would be undefined
    assert synflow(net, torch.randn(5, 2)) == pytest.approx(44.0)


# Two layers W1 = I, V on one labelled pixel x = (1, 2) of class 0 (a second pixel is ignored):
# logits V x = (0, 0), softmax (1/2, 1/2), dL/dlogits g = (-1/2, 1/2).
V = [[1.0, -0.5], [-1.0, 0.5]]


def _two_pixels():
    images = torch.tensor([[[[1.0, 5.0]], [[2.0, -3.0]]]])  # (1, 2, 1, 2): pixels (1, 2) and (5, -3)
    masks = torch.tensor([[[0, 255]]])
    return images, masks


def test_snip_by_hand():
    # dL/dV = g xᵀ = [[-1/2, -1], [1/2, 1]]: Σ |V ⊙ .| = 1/2 + 1/2 + 1/2 + 1/2 = 2.
    # dL/dW1 = Vᵀ g xᵀ = (-1, 1/2) (1, 2) = [[-1, -2], [1/2, 1]]: Σ |I ⊙ .| = 1 + 1 = 2.
    images, masks = _two_pixels()
    assert snip(_conv1x1([[1.0, 0.0], [0.0, 1.0]], V), images, masks) == pytest.approx(4.0)


def test_grad_norm_sums_per_tensor_norms():
    # ||dL/dV|| = sqrt(1/4 + 1 + 1/4 + 1) = sqrt(2.5); ||dL/dW1|| = sqrt(1 + 4 + 1/4 + 1) = 2.5.
    images, masks = _two_pixels()
    value = grad_norm(_conv1x1([[1.0, 0.0], [0.0, 1.0]], V), images, masks)
    assert value == pytest.approx(2.5 + math.sqrt(2.5))
    assert value != pytest.approx(math.sqrt(2.5 + 6.25))  # not the global norm


def test_fisher_by_hand():
    # One conv W = I, two images of one pixel x = (ln 3, 0), classes 0 and 1: a = x, softmax
    # (3/4, 1/4); the mean loss over 2 pixels gives g1 = (-1/4, 1/4)/2, g2 = (3/4, -3/4)/2.
    # Channel 0: a g = -ln3/8 and 3 ln3/8, so 0.5 * mean(ln²3/64, 9 ln²3/64) = 5 ln²3/128; channel 1: a = 0.
    images = torch.tensor([math.log(3.0), 0.0]).reshape(1, 2, 1, 1).repeat(2, 1, 1, 1)
    masks = torch.tensor([0, 1]).reshape(2, 1, 1)
    assert fisher(_conv1x1([[1.0, 0.0], [0.0, 1.0]]), images, masks) == pytest.approx(5 * math.log(3.0) ** 2 / 128)
    # an in-place ReLU after the conv changes nothing here (a >= 0) and must not break the bookkeeping
    net = nn.Sequential(_conv1x1([[1.0, 0.0], [0.0, 1.0]]), nn.ReLU(inplace=True))
    assert fisher(net, images, masks) == pytest.approx(5 * math.log(3.0) ** 2 / 128)


def test_jacob_cov_of_a_linear_map():
    # J_n = Wᵀ1 at every pixel for every image: the 3x3 correlation matrix is all ones, eigenvalues 3, 0, 0.
    net = _conv1x1([[1.0, 2.0], [0.5, -1.0], [0.0, 3.0]])
    expected = -(math.log(3 + K) + 1 / (3 + K) + 2 * (math.log(K) + 1 / K))
    assert jacob_cov(net, torch.randn(3, 2, 2, 2)) == pytest.approx(expected, rel=1e-9)


class Square(nn.Module):
    def forward(self, x):
        return x * x


def test_jacob_cov_of_uncorrelated_jacobians():
    # J_n = 2 x_n: (0, 0, 1, 1) and (0, 1, 0, 1) are uncorrelated, so the eigenvalues are 1 and 1.
    images = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0]]).reshape(2, 1, 2, 2)
    assert jacob_cov(Square(), images) == pytest.approx(-2 * (math.log(1 + K) + 1 / (1 + K)))


def test_naswot_by_hand():
    # ReLU(I x) on x1 = (1, -1), x2 = (1, 1): codes (1, 0) and (1, 1); N_A = 2, Hamming distance 1,
    # K = [[2, 1], [1, 2]], det 3.
    images = torch.tensor([[1.0, -1.0], [1.0, 1.0]]).reshape(2, 2, 1, 1)
    assert naswot(_conv1x1([[1.0, 0.0], [0.0, 1.0]], relu=True), images) == pytest.approx(math.log(3.0))


class TwoReLUs(nn.Module):
    def forward(self, x):
        return nn.ReLU()(F.relu(x) - 0.5)


def test_naswot_counts_functional_and_module_relus():
    # F.relu: codes (1, 0), (1, 1); then ReLU(y - 1/2): (1/2, -1/2) -> (1, 0), (1/2, 1/2) -> (1, 1).
    # Both layers add [[2, 1], [1, 2]]: K = [[4, 2], [2, 4]], det 12.
    images = torch.tensor([[1.0, -1.0], [1.0, 1.0]]).reshape(2, 2, 1, 1)
    assert naswot(TwoReLUs(), images) == pytest.approx(math.log(12.0))
    assert F.relu.__name__ == "relu"  # the counting wrapper is gone afterwards


def _batch(n=4, h=32, w=32, classes=3):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    masks = torch.randint(0, classes, (n, h, w), generator=g, dtype=torch.uint8)
    masks[:, :2] = 255
    return images, masks


def test_all_scores_deterministic_given_the_seed_and_leaves_the_random_state():
    images, masks = _batch()
    torch.manual_seed(5)
    a = all_scores(tiny_spec(), images, masks, seed=0)
    after = torch.rand(1)
    torch.manual_seed(5)
    b = all_scores(tiny_spec(), images, masks, seed=0)
    assert torch.equal(after, torch.rand(1))
    c = all_scores(tiny_spec(), images, masks, seed=1)
    assert [getattr(a, s) for s in NAMES] == [getattr(b, s) for s in NAMES]
    assert [getattr(a, s) for s in NAMES] != [getattr(c, s) for s in NAMES]


@pytest.mark.parametrize("spec", [tiny_spec(decoder=d) for d in DECODERS] + [tiny_spec(core="mbconv", tvconv_from=2),
                                                                             tiny_spec(core="ssnbt", tvconv_from=3)],
                         ids=[*DECODERS, "tvconv_depthwise", "tvconv_residual"])
def test_every_score_is_finite_on_real_networks(spec):
    images, masks = _batch()
    scores = all_scores(spec, images, masks, seed=0)
    assert all(math.isfinite(getattr(scores, s)) for s in NAMES), scores
    assert scores.synflow > 0 and scores.snip > 0 and scores.grad_norm > 0 and scores.fisher > 0
