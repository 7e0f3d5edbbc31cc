"""`dense`: the baseline every speedup is measured against.

`prepare` composes the rank-1 N x C x k x k filter and the equivalent bias once
(docs/DESIGN.md, "The layer"); forward is one dense `F.conv2d`. The result equals the flattened
layer exactly when padding is 0, or when the lateral and vertical biases are zero (with
padding, the flattened layer pads *after* the inner biases, which no dense filter can
express). Backward is the framework's dense convolution backward, chained to the six
factor parameters so it keeps the same contract.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Implementation
from .composed import _CUDA_FLOATS
from .params import FlatGrads


class Dense(Implementation):
    name = "dense"
    role = "baseline"
    devices = ("cpu", "cuda")
    dtypes = {"cpu": (torch.float32, torch.float64), "cuda": _CUDA_FLOATS}
    description = "the dense k x k convolution with the composed rank-1 filter (the baseline)"
    summary = "the dense k x k convolution with the composed rank-1 filter"

    def gate(self, params, padding):
        if padding == 0:
            return params, FlatGrads.FIELDS
        # With padding the two layers agree only where lateral and vertical biases are 0,
        # so the derivatives along those two biases differ (the border sees them).
        fields = tuple(f for f in FlatGrads.FIELDS if f not in ("lateral_bias", "vertical_bias"))
        return params.without_inner_biases(), fields

    def _prepare(self, params):
        return {"weight": params.dense_weight().contiguous(), "bias": params.dense_bias().contiguous()}

    def _forward_train(self, x, prepared, p):
        return F.conv2d(x, prepared.extra["weight"], prepared.extra["bias"], padding=p), {}

    def _backward(self, saved, gy):
        prm, ex = saved.prepared.params, saved.prepared.extra
        p = saved.padding
        weight = ex["weight"]
        g_x, g_w, g_b = torch.ops.aten.convolution_backward(
            gy, saved.x, weight, [weight.shape[0]], [1, 1], [p, p], [1, 1], False, [0, 0], 1, [True, True, True]
        )
        lat, vert, hor = prm.lateral, prm.vertical, prm.horizontal
        sum_v, sum_h = vert.sum(1), hor.sum(1)
        # Chain rule through W[n, c, i, j] = lateral[n, c] * vertical[n, i] * horizontal[n, j] ...
        g_lat = torch.einsum("ncij,ni,nj->nc", g_w, vert, hor)
        g_vert = torch.einsum("ncij,nc,nj->ni", g_w, lat, hor)
        g_hor = torch.einsum("ncij,nc,ni->nj", g_w, lat, vert)
        # ... and through bias = hb + vb * sum(h) + lb * sum(v) * sum(h).
        g_vert = g_vert + (g_b * prm.lateral_bias * sum_h)[:, None]
        g_hor = g_hor + (g_b * (prm.vertical_bias + prm.lateral_bias * sum_v))[:, None]
        return FlatGrads(g_x, g_lat, g_b * sum_v * sum_h, g_vert, g_b * sum_h, g_hor, g_b)


IMPLEMENTATIONS = [Dense()]
