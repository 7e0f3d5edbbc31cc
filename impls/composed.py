"""`torch` and `cudnn`: the three stages composed from the framework's convolutions.

`torch` calls `F.conv2d` per stage and lets PyTorch dispatch (oneDNN on CPU; on CUDA,
cuDNN for the 1x1 stage and, for float32 NCHW depthwise stages, PyTorch's own native
depthwise kernels). Its backward is the framework's `convolution_backward` per stage.

`cudnn` forces every convolution through cuDNN: `torch.cudnn_convolution` forward,
`torch.cudnn_convolution_transpose` (cuDNN's backward-data) for input gradients, and
the weight gradients as cuDNN convolutions of the stage input with the output gradient
(the batch becomes the reduction axis), since PyTorch exposes no direct cuDNN
backward-filter call. Bias terms are plain reductions and adds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Implementation
from .params import FlatGrads

_CUDA_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _stage_weights(prm):
    n, c, k = prm.out_channels, prm.in_channels, prm.kernel_size
    return {
        "w_lat": prm.lateral.view(n, c, 1, 1),
        "w_vert": prm.vertical.view(n, 1, k, 1),
        "w_hor": prm.horizontal.view(n, 1, 1, k),
    }


class ComposedLayer(torch.nn.Module):
    """`torch`'s three stages as an nn.Module whose weights are its own parameters (copies,
    no grad): what a deployed model holds, and what an exporter (torch.onnx.export) or
    inductor's freezing takes as constants."""

    def __init__(self, params, padding: int):
        super().__init__()
        w = _stage_weights(params.detach())
        for name, value in (("w_lat", w["w_lat"]), ("w_vert", w["w_vert"]), ("w_hor", w["w_hor"]),
                            ("b_lat", params.lateral_bias), ("b_vert", params.vertical_bias),
                            ("b_hor", params.horizontal_bias)):
            self.register_parameter(name, torch.nn.Parameter(value.detach().clone(), requires_grad=False))
        self.n, self.p = params.out_channels, padding

    def forward(self, x):
        t1 = F.conv2d(x, self.w_lat, self.b_lat)
        t2 = F.conv2d(t1, self.w_vert, self.b_vert, padding=(self.p, 0), groups=self.n)
        return F.conv2d(t2, self.w_hor, self.b_hor, padding=(0, self.p), groups=self.n)


class TorchComposed(Implementation):
    name = "torch"
    role = "peer"
    devices = ("cpu", "cuda")
    dtypes = {"cpu": (torch.float32, torch.float64), "cuda": _CUDA_FLOATS}
    description = "three F.conv2d calls with PyTorch's own dispatch; backward by aten.convolution_backward"
    summary = "three `F.conv2d` calls, PyTorch's own dispatch (oneDNN on CPU)"

    def _prepare(self, params):
        return _stage_weights(params)

    def _forward_train(self, x, prepared, p):
        prm, w = prepared.params, prepared.extra
        n = prm.out_channels
        t1 = F.conv2d(x, w["w_lat"], prm.lateral_bias)
        t2 = F.conv2d(t1, w["w_vert"], prm.vertical_bias, padding=(p, 0), groups=n)
        y = F.conv2d(t2, w["w_hor"], prm.horizontal_bias, padding=(0, p), groups=n)
        return y, {"t1": t1, "t2": t2}

    def stages(self, x, prepared, padding=0):
        x, padding = self._check_input(x, prepared, padding)
        prm, w = prepared.params, prepared.extra
        n = prm.out_channels
        with torch.no_grad():
            t1 = F.conv2d(x, w["w_lat"], prm.lateral_bias)
            t2 = F.conv2d(t1, w["w_vert"], prm.vertical_bias, padding=(padding, 0), groups=n)
        return {
            "lateral": lambda: F.conv2d(x, w["w_lat"], prm.lateral_bias),
            "vertical": lambda: F.conv2d(t1, w["w_vert"], prm.vertical_bias, padding=(padding, 0), groups=n),
            "horizontal": lambda: F.conv2d(t2, w["w_hor"], prm.horizontal_bias, padding=(0, padding), groups=n),
        }

    def _backward(self, saved, gy):
        prm, w = saved.prepared.params, saved.prepared.extra
        n, p = prm.out_channels, saved.padding
        t1, t2 = saved.tensors["t1"], saved.tensors["t2"]

        def stage(grad, inp, weight, padding, groups):
            return torch.ops.aten.convolution_backward(
                grad, inp, weight, [weight.shape[0]], [1, 1], padding, [1, 1], False, [0, 0], groups, [True, True, True]
            )

        g_t2, g_hor, g_hb = stage(gy, t2, w["w_hor"], [0, p], n)
        g_t1, g_vert, g_vb = stage(g_t2, t1, w["w_vert"], [p, 0], n)
        g_x, g_lat, g_lb = stage(g_t1, saved.x, w["w_lat"], [0, 0], 1)
        return FlatGrads(
            g_x, g_lat.view_as(prm.lateral), g_lb, g_vert.view_as(prm.vertical), g_vb, g_hor.view_as(prm.horizontal), g_hb
        )


def _cudnn_conv(inp, weight, padding, groups):
    b = torch.backends.cudnn
    return torch.cudnn_convolution(inp, weight, padding, [1, 1], [1, 1], groups, b.benchmark, b.deterministic, b.allow_tf32)


def _cudnn_conv_transpose(grad, weight, padding, groups):
    b = torch.backends.cudnn
    return torch.cudnn_convolution_transpose(
        grad, weight, padding, [0, 0], [1, 1], [1, 1], groups, b.benchmark, b.deterministic, b.allow_tf32
    )


class Cudnn(Implementation):
    """Every convolution of forward and backward through cuDNN. `conv` and
    `conv_transpose` are injectable so the tests can check the index algebra on the CPU
    with PyTorch's reference convolutions."""

    name = "cudnn"
    role = "peer"
    devices = ("cuda",)
    dtypes = {"cuda": _CUDA_FLOATS}
    description = "three convolutions forced through cuDNN (torch.cudnn_convolution), backward through cuDNN too"
    summary = "every convolution forced through cuDNN, backward too"

    def __init__(self, conv=_cudnn_conv, conv_transpose=_cudnn_conv_transpose):
        self._conv = conv
        self._conv_transpose = conv_transpose

    def _dependency_reason(self, device_type):
        if not torch.backends.cudnn.is_available():
            return "cuDNN is not available in this PyTorch build"
        return None

    def _prepare(self, params):
        return _stage_weights(params)

    def _forward_train(self, x, prepared, p):
        prm, w = prepared.params, prepared.extra
        n = prm.out_channels
        t1 = self._conv(x, w["w_lat"], [0, 0], 1).add_(prm.lateral_bias[:, None, None])
        t2 = self._conv(t1, w["w_vert"], [p, 0], n).add_(prm.vertical_bias[:, None, None])
        y = self._conv(t2, w["w_hor"], [0, p], n).add_(prm.horizontal_bias[:, None, None])
        return y, {"t1": t1, "t2": t2}

    def _depthwise_weight_grad(self, inp, grad, padding):
        """grad_w[n, i, j] = sum_b (inp_padded[b, n] correlated with grad[b, n])[i, j]: a
        grouped convolution whose channels are (n, b) pairs and whose kernel is grad."""
        b, n, h, w = inp.shape
        inp_nb = inp.transpose(0, 1).reshape(1, n * b, h, w)
        grad_nb = grad.transpose(0, 1).contiguous()  # (N, B, oh, ow): N filters of B channels
        return self._conv(inp_nb, grad_nb, padding, n)[0]  # (N, kh, kw)

    def _backward(self, saved, gy):
        prm, w = saved.prepared.params, saved.prepared.extra
        n, p, x = prm.out_channels, saved.padding, saved.x
        t1, t2 = saved.tensors["t1"], saved.tensors["t2"]
        g_hb = gy.sum((0, 2, 3))
        g_hor = self._depthwise_weight_grad(t2, gy, [0, p]).reshape(n, -1)
        g_t2 = self._conv_transpose(gy, w["w_hor"], [0, p], n)
        g_vb = g_t2.sum((0, 2, 3))
        g_vert = self._depthwise_weight_grad(t1, g_t2, [p, 0]).reshape(n, -1)
        g_t1 = self._conv_transpose(g_t2, w["w_vert"], [p, 0], n)
        g_lb = g_t1.sum((0, 2, 3))
        # Lateral weight gradient: channels of x become the batch, the batch becomes the
        # reduction channel axis, and g_t1 is an H x W kernel.
        g_lat = self._conv(x.transpose(0, 1).contiguous(), g_t1.transpose(0, 1).contiguous(), [0, 0], 1)
        g_lat = g_lat.reshape(prm.in_channels, n).t().contiguous()
        g_x = self._conv_transpose(g_t1, w["w_lat"], [0, 0], 1)
        return FlatGrads(g_x, g_lat, g_lb, g_vert, g_vb, g_hor, g_hb)


IMPLEMENTATIONS = [TorchComposed(), Cudnn()]
