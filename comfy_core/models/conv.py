"""A Conv2d that runs as one GEMM when its input is small.

Why: on CPU, torch's oneDNN convolution re-lays out the weight into a blocked format on EVERY call (the reorder is
not cached). When the activations are small (an 8×8 latent, or the deep 1×1..4×4 levels of any UNet) that reorder
is most of the cost: a 3×3 1280→1280 conv at 1×1 spatial spends ~6 ms reordering 59 MB of weights for ~0.1 ms of
arithmetic. A GEMM over im2col patches reads the weight once, in place.

Rule: use the GEMM when B·L ≤ out_channels / GEMM_PIXEL_RATIO (L = output pixels), i.e. when the weight is much
bigger than the patch matrix; otherwise building patches costs more than the reorder saves and oneDNN's direct
convolution is faster.
Results equal F.conv2d up to float32 summation order (~1e-6 relative).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Measured on the SD1.5 UNet, one thread: 8 beats 1 and 16 on a 64x64 latent (13.7 vs 14.2 / 15.4 CPU s), all tie on
# an 8x8 latent; per conv, 1280->1280 at B·L=128 wins (0.67x oneDNN's time), 640->640 at B·L=128 loses (1.2x).
GEMM_PIXEL_RATIO = 8


def gemm_pays(x: torch.Tensor, weight: torch.Tensor, out_hw: tuple[int, int]) -> bool:
    """Whether conv2d(x, weight) is cheaper as im2col + GEMM (CPU float, small output; see module docstring)."""
    return x.device.type == "cpu" and x.shape[0] * out_hw[0] * out_hw[1] * GEMM_PIXEL_RATIO <= weight.shape[0]


def conv2d_gemm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], out_hw: tuple[int, int],
) -> torch.Tensor:
    """F.conv2d (groups=1, zero padding) as patches [B, L, Cin·kh·kw] @ weightᵀ -> [B, Cout, oh, ow] contiguous."""
    b = x.shape[0]
    cout, _, kh, kw = weight.shape
    if (kh, kw) == (1, 1) and stride == (1, 1) and padding == (0, 0):
        cols = x.flatten(2)  # [B, Cin, L]: a 1×1 conv is a Linear over pixels
    else:
        cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # [B, Cin·kh·kw, L]
    pixels = cols.shape[-1]
    cols = cols.transpose(1, 2).reshape(b * pixels, -1)  # one 2-D GEMM, so the weight is read once for the batch
    out = F.linear(cols, weight.reshape(cout, -1), bias)  # [B·L, Cout]
    # contiguous NCHW: given channels-last activations, oneDNN also copies its weight to channels-last every call
    return out.view(b, pixels, cout).transpose(1, 2).reshape(b, cout, *out_hw).contiguous()


def conv_out_hw(conv: nn.Conv2d, h: int, w: int) -> tuple[int, int]:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters, same state-dict keys) that switches to conv2d_gemm for small CPU inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == 1 and self.padding_mode == "zeros" and isinstance(self.padding, tuple) and x.ndim == 4:
            out_hw = conv_out_hw(self, x.shape[-2], x.shape[-1])
            if gemm_pays(x, self.weight, out_hw):
                return conv2d_gemm(x, self.weight, self.bias, self.stride, self.padding, self.dilation, out_hw)
        return super().forward(x)
