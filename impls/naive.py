"""`naive`: the layer by its definition, one loop iteration per input channel or tap.

The readable implementation: each stage is a sum of shifted, scaled copies of its input,
and the backward pass is written out the same way (no autograd). Slow by design.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Implementation
from .params import FlatGrads


def _bias(b: torch.Tensor) -> torch.Tensor:
    return b[None, :, None, None]


class Naive(Implementation):
    name = "naive"
    devices = ("cpu",)
    dtypes = {"cpu": (torch.float32, torch.float64)}
    description = "direct convolution by the definition, loops over channels and taps"
    summary = "the definition, loops over channels and taps (the readable one)"

    def _forward_train(self, x, prepared, padding):
        prm = prepared.params
        c, k = prm.in_channels, prm.kernel_size
        # L: t1[:, n] = sum_c lateral[n, c] * x[:, c] + lateral_bias[n]
        t1 = _bias(prm.lateral_bias).expand(x.shape[0], -1, x.shape[2], x.shape[3]).clone()
        for ci in range(c):
            t1 += prm.lateral[None, :, ci, None, None] * x[:, ci : ci + 1]
        # V: zero-pad rows after the bias, then sum the k shifted rows.
        t1p = F.pad(t1, (0, 0, padding, padding))
        oh = t1p.shape[2] - k + 1
        t2 = _bias(prm.vertical_bias).expand(t1.shape[0], -1, oh, t1.shape[3]).clone()
        for r in range(k):
            t2 += _bias(prm.vertical[:, r]) * t1p[:, :, r : r + oh, :]
        # H: zero-pad columns, then sum the k shifted columns.
        t2p = F.pad(t2, (padding, padding, 0, 0))
        ow = t2p.shape[3] - k + 1
        y = _bias(prm.horizontal_bias).expand(t2.shape[0], -1, oh, ow).clone()
        for s in range(k):
            y += _bias(prm.horizontal[:, s]) * t2p[:, :, :, s : s + ow]
        return y, {"t1p": t1p, "t2p": t2p}

    def _backward(self, saved, gy):
        prm = saved.prepared.params
        x, p = saved.x, saved.padding
        t1p, t2p = saved.tensors["t1p"], saved.tensors["t2p"]
        c, k = prm.in_channels, prm.kernel_size
        h, w = x.shape[2], x.shape[3]
        oh, ow = gy.shape[2], gy.shape[3]
        # H stage: y[..., j] += horizontal[s] * t2p[..., j + s]
        g_hb = gy.sum((0, 2, 3))
        g_hor = torch.empty_like(prm.horizontal)
        g_t2p = torch.zeros_like(t2p)
        for s in range(k):
            g_hor[:, s] = (gy * t2p[:, :, :, s : s + ow]).sum((0, 2, 3))
            g_t2p[:, :, :, s : s + ow] += _bias(prm.horizontal[:, s]) * gy
        g_t2 = g_t2p[:, :, :, p : p + w]  # the padding columns have no parameter behind them
        # V stage: t2[:, :, i] += vertical[r] * t1p[:, :, i + r]
        g_vb = g_t2.sum((0, 2, 3))
        g_vert = torch.empty_like(prm.vertical)
        g_t1p = torch.zeros_like(t1p)
        for r in range(k):
            g_vert[:, r] = (g_t2 * t1p[:, :, r : r + oh, :]).sum((0, 2, 3))
            g_t1p[:, :, r : r + oh, :] += _bias(prm.vertical[:, r]) * g_t2
        g_t1 = g_t1p[:, :, p : p + h, :]
        # L stage: t1[:, n] += lateral[n, c] * x[:, c]
        g_lb = g_t1.sum((0, 2, 3))
        g_lat = torch.empty_like(prm.lateral)
        g_x = torch.empty_like(x)
        for ci in range(c):
            g_lat[:, ci] = (g_t1 * x[:, ci : ci + 1]).sum((0, 2, 3))
            g_x[:, ci] = (prm.lateral[None, :, ci, None, None] * g_t1).sum(1)
        return FlatGrads(g_x, g_lat, g_lb, g_vert, g_vb, g_hor, g_hb)


IMPLEMENTATIONS = [Naive()]
