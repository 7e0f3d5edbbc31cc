"""`im2col`: every stage as im2col (unfold) + GEMM, the backward as GEMMs + col2im (fold).

The lateral 1x1 stage is already a GEMM over pixels. The depthwise stages unfold their
padded input into (B, N, k, pixels) columns and multiply each channel's k taps by its
columns: a batched (1 x k) @ (k x pixels) product per channel. The columns are kept for
the weight gradients, as an im2col training step would keep them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Implementation
from .params import FlatGrads

_ALL_FLOATS = (torch.float32, torch.float64)


def _depthwise_forward(t, weight, bias, kernel, padding):
    """One depthwise stage: unfold `t` with a (kh, kw) kernel, then a per-channel GEMM."""
    b, n = t.shape[:2]
    k = weight.shape[1]
    cols = F.unfold(t, kernel_size=kernel, padding=padding).view(b, n, k, -1)
    out = torch.matmul(weight.view(n, 1, k), cols).squeeze(2) + bias[None, :, None]
    return out, cols


def _depthwise_backward(grad_out, cols, weight, in_size, kernel, padding):
    """Gradients of one depthwise stage: weight by GEMM with the columns, input by the
    transposed GEMM followed by col2im (fold), which sums overlapping taps."""
    b, n = grad_out.shape[:2]
    k = weight.shape[1]
    g = grad_out.reshape(b, n, 1, -1)
    g_bias = g.sum((0, 2, 3))
    g_weight = torch.matmul(g, cols.transpose(2, 3)).sum(0).view(n, k)
    g_cols = torch.matmul(weight.view(n, k, 1), g).view(b, n * k, -1)
    g_in = F.fold(g_cols, output_size=in_size, kernel_size=kernel, padding=padding)
    return g_in, g_weight, g_bias


class Im2col(Implementation):
    name = "im2col"
    devices = ("cpu", "cuda")
    dtypes = {"cpu": _ALL_FLOATS, "cuda": _ALL_FLOATS}
    description = "unfold (im2col) + GEMM per stage; backward as GEMMs + fold (col2im)"
    summary = "unfold + GEMM per stage, backward as GEMMs + fold"

    def _forward_train(self, x, prepared, padding):
        prm = prepared.params
        b, c, h, w = x.shape
        n, k = prm.out_channels, prm.kernel_size
        oh, ow = h + 2 * padding - k + 1, w + 2 * padding - k + 1
        t1 = (torch.matmul(prm.lateral, x.view(b, c, h * w)) + prm.lateral_bias[None, :, None]).view(b, n, h, w)
        t2, cols_v = _depthwise_forward(t1, prm.vertical, prm.vertical_bias, (k, 1), (padding, 0))
        t2 = t2.view(b, n, oh, w)
        y, cols_h = _depthwise_forward(t2, prm.horizontal, prm.horizontal_bias, (1, k), (0, padding))
        return y.view(b, n, oh, ow), {"cols_v": cols_v, "cols_h": cols_h}

    def _backward(self, saved, gy):
        prm = saved.prepared.params
        x, p = saved.x, saved.padding
        b, c, h, w = x.shape
        n, k = prm.out_channels, prm.kernel_size
        oh = gy.shape[2]
        g_t2, g_hor, g_hb = _depthwise_backward(gy, saved.tensors["cols_h"], prm.horizontal, (oh, w), (1, k), (0, p))
        g_t1, g_vert, g_vb = _depthwise_backward(g_t2, saved.tensors["cols_v"], prm.vertical, (h, w), (k, 1), (p, 0))
        g_t1 = g_t1.view(b, n, h * w)
        xf = x.view(b, c, h * w)
        g_lb = g_t1.sum((0, 2))
        g_lat = torch.matmul(g_t1, xf.transpose(1, 2)).sum(0)
        g_x = torch.matmul(prm.lateral.t(), g_t1).view(b, c, h, w)
        return FlatGrads(g_x, g_lat, g_lb, g_vert, g_vb, g_hor, g_hb)


IMPLEMENTATIONS = [Im2col()]
