"""TVConv: per-pixel application, ones-init equivalence to a depthwise conv, eval-mode cache."""
import pytest
import torch
import torch.nn.functional as F

from search_spaces.blocks import TVConv, apply_pixel_kernels


@pytest.mark.parametrize("k,d", [(3, 1), (3, 2), (5, 1), (5, 3)])
def test_constant_kernel_equals_depthwise_conv2d(k, d):
    c, h, w = 4, 9, 11
    x = torch.randn(2, c, h, w)
    weight = torch.randn(c, 1, k, k)
    expected = F.conv2d(x, weight, padding=d * (k - 1) // 2, dilation=d, groups=c)
    kernels = weight.view(c, k * k, 1, 1).expand(c, k * k, h, w)
    torch.testing.assert_close(apply_pixel_kernels(x, kernels, k, d), expected)


def test_fresh_tvconv_is_a_plain_depthwise_conv():
    tv = TVConv(channels=6, kernel=3, size=(8, 12))
    kernels = tv.generate_kernels()
    # ones-initialised affinity maps: the generated kernel is the same at every pixel
    torch.testing.assert_close(kernels, kernels[:, :, :1, :1].expand_as(kernels))
    x = torch.randn(2, 6, 8, 12)
    expected = F.conv2d(x, kernels[:, :, 0, 0].reshape(6, 1, 3, 3), padding=1, groups=6)
    torch.testing.assert_close(tv(x), expected)


def test_eval_cache_is_reused_then_invalidated_by_an_optimizer_step():
    tv = TVConv(channels=4, kernel=3, size=(6, 6))
    x = torch.randn(1, 4, 6, 6)
    tv.eval()
    with torch.inference_mode():
        before = tv(x)
        assert tv.cached_kernels() is tv.cached_kernels()  # generated once
    tv.train()
    opt = torch.optim.SGD(tv.parameters(), lr=0.5)
    tv(x).square().sum().backward()
    opt.step()
    tv.eval()
    with torch.inference_mode():
        after = tv(x)
    assert not torch.allclose(before, after)
    with torch.no_grad():
        fresh = apply_pixel_kernels(x, tv.generate_kernels(), 3)
    torch.testing.assert_close(after, fresh)


def test_cache_follows_weights_changed_in_eval_mode():
    tv = TVConv(channels=4, kernel=3, size=(6, 6)).eval()
    x = torch.randn(1, 4, 6, 6)
    first = tv(x)
    opt = torch.optim.SGD(tv.parameters(), lr=0.1)
    tv.generate_kernels().sum().backward()  # gradients without leaving eval mode
    opt.step()
    second = tv(x)
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, apply_pixel_kernels(x, tv.generate_kernels().detach(), 3))


def test_wrong_resolution_is_an_error_not_a_resize():
    tv = TVConv(channels=4, kernel=3, size=(6, 6))
    with pytest.raises(ValueError, match=r"\(6, 6\)"):
        tv(torch.randn(1, 4, 8, 8))
