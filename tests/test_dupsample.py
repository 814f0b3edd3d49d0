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


def test_small_label_sets_give_the_exact_pca_of_all_patches():
    """Below the sample cap every patch is kept: the basis spans numpy's top singular subspace."""
    import numpy as np
    from search_spaces.blocks import dupsample
    labels = [street_label(shift=s) for s in range(6)]
    n = 8
    basis, mean = fit_reconstruction(iter(labels), num_classes=4, ratio=1, n=n)  # a one-pass stream
    y = np.concatenate([label_patches(lab, 4, 1).numpy() for lab in labels]).astype(np.float64)
    assert len(y) < dupsample.MAX_PATCHES
    _, _, vt = np.linalg.svd(y - y.mean(0), full_matrices=False)
    ref = vt[:n].T
    np.testing.assert_allclose(mean.numpy(), y.mean(0), atol=1e-6)
    # same subspace: projecting one basis onto the other loses nothing
    np.testing.assert_allclose(np.linalg.norm(ref.T @ basis.numpy().astype(np.float64), axis=0), 1.0, atol=1e-4)


def test_reservoir_sample_is_seeded_and_uniform_over_maps():
    from search_spaces.blocks.dupsample import sample_patches
    # 40 maps, each a single class id (its index): every map must be sampled in proportion
    maps = [torch.full((64, 64), i, dtype=torch.uint8) for i in range(40)]
    a = sample_patches(iter(maps), ratio=1, k=2000, seed=3)
    b = sample_patches(iter(maps), ratio=1, k=2000, seed=3)
    c = sample_patches(iter(maps), ratio=1, k=2000, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    counts = torch.bincount(a[:, 0].long(), minlength=40)  # 64 patches per map, 2,560 in all
    assert a.shape == (2000, 64) and counts.sum() == 2000
    # binomial(64, 2000/2560): mean 50, sd 3.3; a first-come or last-come sample would fail this
    assert counts.min() > 30 and counts.max() < 64


def _fit_peak_rss_mb(n_maps: int, q) -> None:
    """Child process: fit on n_maps generated 512x1024 label maps; report peak RSS growth (MB)."""
    import resource
    from search_spaces.blocks import fit_reconstruction

    def maps():
        gen = torch.Generator().manual_seed(0)
        for _ in range(n_maps):  # blocky street-like layouts with ignored pixels, made on the fly
            grid = torch.randint(0, 19, (16, 32), generator=gen, dtype=torch.uint8)
            grid[0, :4] = 255
            yield grid.repeat_interleave(32, 0).repeat_interleave(32, 1)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        fit_reconstruction(maps(), num_classes=19, ratio=1, n=64)
        q.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    except MemoryError:
        q.put(float("inf"))


def _peak_in_child(n_maps: int) -> float:
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_limited, args=(n_maps, q))
    p.start()
    p.join(300)
    return q.get(timeout=5) if p.exitcode == 0 else float("inf")


def _limited(n_maps, q):
    import resource
    torch.set_num_threads(1)  # per-thread allocator arenas would eat the address-space cap
    # a fit that grows with the data set dies here instead of exhausting the machine
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vm + 3 * 2**30, hard))
    _fit_peak_rss_mb(n_maps, q)


def test_fit_memory_stays_flat_from_100_to_3000_label_maps_at_512x1024():
    small, large = _peak_in_child(100), _peak_in_child(3000)
    # the 20,000-patch sample at 1,216 dimensions is ~100 MB in float32; 3,000 whole maps of
    # patches would be ~120 GB
    assert large < 400, large
    assert large - small < 50, (small, large)


def _reference_fit(labels, num_classes, ratio, n, ignore_index=255):
    """The W of the fit's definition, written out here: the top-n eigenvectors of the centred
    one-hot patches' covariance, by decreasing eigenvalue (columns past the patches' rank zero)."""
    y = torch.cat([label_patches(lab, num_classes, ratio, ignore_index) for lab in labels])
    mean = y.mean(0)
    c = y - mean
    _, vecs = torch.linalg.eigh((c.T.double() @ c.double()))
    q = min(n, y.shape[1], len(y))
    basis = torch.zeros(y.shape[1], n, dtype=torch.float64)
    basis[:, :q] = vecs[:, -q:].flip(1)
    return basis.float(), mean


def test_one_decomposition_serves_every_n_and_every_seed_when_every_patch_is_taken():
    from dataclasses import dataclass

    from nas import services
    from search_spaces import ArchSpec
    from search_spaces.blocks.dupsample import patch_pca

    labels = torch.stack([street_label(shift=s) for s in range(6)]).to(torch.uint8)
    pca = patch_pca(labels, num_classes=4, ratio=1, n=8)
    for n in (8, 32, 300):  # 300: more codes than the 6 x 64 patches have rank, so spare codes are zero
        basis, mean = pca.basis(n)
        ref_basis, ref_mean = _reference_fit(labels, 4, 1, n)
        assert torch.allclose(mean, ref_mean)
        # an eigenvector's sign is arbitrary: compare the projections they span, column by column
        assert torch.allclose(basis.abs(), ref_basis.abs(), atol=1e-5)
        assert torch.equal(basis, fit_reconstruction(labels, 4, 1, n)[0])  # what a trial fits itself

    @dataclass
    class Info:
        ignore_index: int = 255

    @dataclass
    class Split:
        masks: torch.Tensor

        def __len__(self):
            return len(self.masks)

    @dataclass
    class Data:
        train: Split
        info: Info

    data = Data(Split(labels), Info())
    base = tiny_spec(decoder="dupsample", num_classes=4, height=64, width=64).to_dict()
    asked = [(ArchSpec.from_dict({**base, "decoder": {**base["decoder"], "width": width}}), seed)
             for width, seed in ((32, 0), (64, 0), (32, 1000), (64, 1001))]
    expected = [services.fit_for(spec, data, seed) for spec, seed in asked]
    made, fits, real = [], services.ReconstructionFits(), services.pca_for
    try:
        services.pca_for = lambda spec, d, seed: made.append(seed) or real(spec, d, seed)
        got = [fits(spec, data, seed) for spec, seed in asked]
    finally:
        services.pca_for = real
    assert all(torch.equal(a, b) for g, e in zip(got, expected) for a, b in zip(g, e))
    assert made == [0]  # 6 maps x 64 patches < the sample size: every seed takes every patch, in order
    many = Data(Split(labels.repeat(60, 1, 1)), Info())  # 360 maps x 64 patches > the 20,000 sampled
    spec = asked[0][0]
    assert services.pca_key(spec, many, 0) != services.pca_key(spec, many, 1)  # the seed picks the sample
    assert services.pca_key(spec, data, 0) == services.pca_key(spec, data, 1)
    low_rank = tiny_spec(decoder="dupsample", num_classes=8, ratio=4, height=64, width=64)  # 8 x 32^2 > 2048
    assert services.pca_key(low_rank, data, 0) != services.pca_key(low_rank, data, 1)  # a seeded projection
