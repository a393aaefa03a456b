"""conv.Conv2d: the GEMM path for small CPU inputs equals F.conv2d (float32 summation order only), keeps the
state-dict layout, returns contiguous NCHW, and is chosen only when the output is small next to the weight."""
import pytest
import torch
import torch.nn.functional as F

from comfy_core.models import conv
from comfy_core.models.conv import Conv2d, conv2d_gemm, conv_out_hw, gemm_pays


@pytest.mark.parametrize("cin, cout, k, stride, padding, dilation, hw", [
    (16, 24, 3, 1, 1, 1, (5, 7)),     # UNet/VAE 3x3
    (16, 24, 3, 2, 1, 1, (7, 6)),     # UNet Downsample (odd sizes)
    (16, 24, 3, 2, 0, 1, (8, 8)),     # VAE Downsample (padding done by the caller)
    (16, 24, 1, 1, 0, 1, (4, 4)),     # skip connection / proj
    (8, 12, 3, 1, 2, 2, (6, 5)),      # dilation
    (32, 32, 3, 1, 1, 1, (1, 1)),     # deepest UNet level of an 8x8 latent
])
def test_gemm_matches_conv2d(cin, cout, k, stride, padding, dilation, hw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cin, *hw, generator=g)
    m = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation)
    out_hw = conv_out_hw(m, *hw)
    ours = conv2d_gemm(x, m.weight, m.bias, m.stride, m.padding, m.dilation, out_hw)
    ref = F.conv2d(x, m.weight, m.bias, stride, padding, dilation)
    assert ours.shape == ref.shape and ours.is_contiguous()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_gemm_without_bias():
    x = torch.randn(1, 8, 3, 3)
    w = torch.randn(4, 8, 3, 3)
    ours = conv2d_gemm(x, w, None, (1, 1), (1, 1), (1, 1), (3, 3))
    torch.testing.assert_close(ours, F.conv2d(x, w, None, padding=1), rtol=1e-5, atol=1e-5)


def test_module_picks_the_path_by_size(monkeypatch):
    m = Conv2d(64, 1280, 3, padding=1)
    calls = []
    monkeypatch.setattr(conv, "conv2d_gemm", lambda *a: calls.append(a) or F.conv2d(a[0], a[1], a[2], a[3], a[4], a[5]))
    small, large = torch.randn(2, 64, 2, 2), torch.randn(2, 64, 32, 32)
    assert gemm_pays(small, m.weight, (2, 2)) and not gemm_pays(large, m.weight, (32, 32))
    with torch.no_grad():
        torch.testing.assert_close(m(small), F.conv2d(small, m.weight, m.bias, padding=1))
        assert len(calls) == 1
        m(large)
        assert len(calls) == 1  # oneDNN for the large input


def test_same_state_dict_as_nn_conv2d():
    ours, ref = Conv2d(8, 16, 3, padding=1), torch.nn.Conv2d(8, 16, 3, padding=1)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(1, 8, 2, 2)  # small: the GEMM path
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
