"""DUpsampling's data-dependent reconstruction matrix and decoder."""
import torch
import torch.nn.functional as F

from search_spaces import build_model
from search_spaces.blocks import fit_reconstruction, label_patches

from helpers import tiny_spec


def street_label(h=64, w=64, shift=0, classes=4) -> torch.Tensor:
    """A structured layout: sky band, building band, road, and thin vertical poles."""
    lab = torch.zeros(h, w, dtype=torch.long)
    lab[h // 4 + shift:, :] = 1
    lab[h // 2 + shift:, :] = 2
    for x in range(5 + shift, w, 17):
        lab[h // 8: h // 2, x:x + 2] = 3
    return lab


def test_patch_order_matches_the_models_depth_to_space():
    lab = street_label()
    lab[0, 0] = 255
    for ratio in (1, 2):
        patches = label_patches(lab, 4, ratio)  # (P, D)
        h, w = 64 // (8 * ratio), 64 // (8 * ratio)
        grid = patches.T.reshape(1, -1, h, w)
        onehot = F.pixel_shuffle(F.pixel_shuffle(grid, 8), ratio)[0]
        assert onehot[:, 0, 0].sum() == 0  # ignored pixel: all-zero target
        assert torch.equal(onehot.argmax(0)[1:], lab[1:])


def test_pca_reconstructs_label_patches_and_beats_a_random_matrix():
    labels = [street_label(shift=s) for s in range(8)]
    n = 16
    basis, mean = fit_reconstruction(labels, num_classes=4, ratio=1, n=n)
    test = label_patches(street_label(shift=3), 4, 1)

    def error(b):
        recon = (test - mean) @ b @ b.T + mean
        return (recon - test).square().sum(1).mean().item(), (recon.view(len(test), 4, 64).argmax(1) == test.view(len(test), 4, 64).argmax(1)).float().mean().item()

    err_pca, acc_pca = error(basis)
    rand = torch.linalg.qr(torch.randn(basis.shape, generator=torch.Generator().manual_seed(0)))[0]
    err_rand, _ = error(rand)
    # a one-hot 8x8 patch has squared norm 64: relative error under 5 %, every pixel's class recovered
    assert err_pca / 64 < 0.05 and acc_pca > 0.99
    assert err_pca < 0.1 * err_rand


def test_decoder_fit_installs_the_basis_and_the_net_still_runs():
    spec = tiny_spec(decoder="dupsample", num_classes=4, height=64, width=64)
    model = build_model(spec)
    before = model.decoder.basis.clone()
    model.decoder.fit([street_label(shift=s) for s in range(4)])
    assert not torch.equal(before, model.decoder.basis)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4, 64, 64)
