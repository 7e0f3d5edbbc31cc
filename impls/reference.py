"""The float64 oracle: forward and every gradient of the flattened layer by its definition.

This is deliberately not written like any benchmarked implementation: each 1-D
convolution is a multiplication by an explicit banded (Toeplitz) matrix, which encodes
the zero padding by leaving entries out, and each gradient is the transposed product.
Nothing here calls `F.conv2d`, unfold or autograd, so it is an independent check of
them. It runs in float64 on the tensors' own device and is never timed.

    t1 = lateral @ x + lateral_bias                  (per pixel, over channels)
    t2[b, n] = Band_V[n] @ t1[b, n] + vertical_bias    (along H, padding p)
    y[b, n]  = t2[b, n] @ Band_H[n]^T + horizontal_bias (along W, padding p)

with Band[n][o, i] = w[n, i - o + p] where 0 <= i - o + p < k, else 0.
"""

from __future__ import annotations

import torch

from .base import Implementation
from .params import FlatGrads, FlatParams
from .shapes import output_size


def band_matrix(weight: torch.Tensor, in_len: int, padding: int) -> torch.Tensor:
    """(N, out_len, in_len) matrix whose row o holds the taps that output o applies to the
    unpadded input: cross-correlation with zero padding `padding` on both ends."""
    n, k = weight.shape
    out_len = in_len + 2 * padding - k + 1
    o = torch.arange(out_len, device=weight.device)[:, None]
    i = torch.arange(in_len, device=weight.device)[None, :]
    tap = i - o + padding  # which kernel tap connects output o to input i
    valid = (tap >= 0) & (tap < k)
    band = weight[:, tap.clamp(0, k - 1)]  # (N, out_len, in_len)
    return band * valid.to(weight.dtype)


def _band_grad_to_taps(grad_band: torch.Tensor, k: int, padding: int) -> torch.Tensor:
    """Adjoint of band_matrix: sum the gradient of each band entry into its tap."""
    n, out_len, in_len = grad_band.shape
    o = torch.arange(out_len, device=grad_band.device)[:, None]
    i = torch.arange(in_len, device=grad_band.device)[None, :]
    tap = (i - o + padding).expand(out_len, in_len)
    valid = (tap >= 0) & (tap < k)
    grad = torch.zeros(n, k, dtype=grad_band.dtype, device=grad_band.device)
    grad.index_add_(1, tap[valid], grad_band[:, valid])
    return grad


def _as64(params: FlatParams) -> FlatParams:
    return params.to(dtype=torch.float64)


def forward(x: torch.Tensor, params: FlatParams, padding: int = 0, *, keep: bool = False):
    """Float64 output of the layer. With keep=True also returns the intermediates."""
    p = _as64(params)
    x = x.to(torch.float64)
    _, _, h, w = x.shape
    t1 = torch.einsum("nc,bchw->bnhw", p.lateral, x) + p.lateral_bias[:, None, None]
    band_v = band_matrix(p.vertical, h, padding)
    t2 = torch.einsum("noh,bnhw->bnow", band_v, t1) + p.vertical_bias[:, None, None]
    band_h = band_matrix(p.horizontal, w, padding)
    y = torch.einsum("nov,bnhv->bnho", band_h, t2) + p.horizontal_bias[:, None, None]
    if keep:
        return y, {"x": x, "t1": t1, "t2": t2, "band_v": band_v, "band_h": band_h}
    return y


def backward(x: torch.Tensor, params: FlatParams, padding: int, grad_y: torch.Tensor) -> FlatGrads:
    """Float64 gradients of sum(y * grad_y) with respect to x and all six parameters."""
    p = _as64(params)
    k = p.kernel_size
    _, s = forward(x, params, padding, keep=True)
    gy = grad_y.to(torch.float64)
    # H stage: y = t2 @ band_h^T + hb
    g_hb = gy.sum((0, 2, 3))
    g_band_h = torch.einsum("bnho,bnhv->nov", gy, s["t2"])
    g_t2 = torch.einsum("bnho,nov->bnhv", gy, s["band_h"])
    # V stage: t2 = band_v @ t1 + vb
    g_vb = g_t2.sum((0, 2, 3))
    g_band_v = torch.einsum("bnow,bnhw->noh", g_t2, s["t1"])
    g_t1 = torch.einsum("bnow,noh->bnhw", g_t2, s["band_v"])
    # L stage: t1 = lateral @ x + lb
    g_lb = g_t1.sum((0, 2, 3))
    g_lat = torch.einsum("bnhw,bchw->nc", g_t1, s["x"])
    g_x = torch.einsum("bnhw,nc->bchw", g_t1, p.lateral)
    return FlatGrads(
        input=g_x,
        lateral=g_lat,
        lateral_bias=g_lb,
        vertical=_band_grad_to_taps(g_band_v, k, padding),
        vertical_bias=g_vb,
        horizontal=_band_grad_to_taps(g_band_h, k, padding),
        horizontal_bias=g_hb,
    )


def expected_output_shape(x_shape, params: FlatParams, padding: int) -> tuple[int, int, int, int]:
    b, _, h, w = x_shape
    oh, ow = output_size(h, w, params.kernel_size, padding)
    return (b, params.out_channels, oh, ow)


class Oracle(Implementation):
    """The oracle behind the implementation contract, in float64 only, so that a
    FlattenedConv2d (and a network of them) can run on it: the float64 twin a network's
    gate compares against (bench/models/cases.py). Not registered and never timed."""

    name = "reference"
    devices = ("cpu", "cuda")
    dtypes = {"cpu": (torch.float64,), "cuda": (torch.float64,)}
    description = "the float64 oracle (banded matrices, no F.conv2d, unfold or autograd)"

    def _forward_train(self, x, prepared, padding):
        return forward(x, prepared.params, padding), {}

    def _backward(self, saved, grad_y):
        return backward(saved.x, saved.prepared.params, saved.padding, grad_y)
