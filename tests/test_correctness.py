"""Every registered implementation against the float64 oracle and the rank-1 dense
equivalence, forward and all gradients, on odd shapes and every padding."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import impls
from impls import reference, verify
from impls.composed import Cudnn

from _support import assert_close, impl_device_params, impl_for_tests, layer_inputs

# (batch, in_channels, out_channels, height, width, kernel_size): batch 1, one channel,
# C != N both ways, k = 1, even k, k = 7, non-square inputs, an input exactly k tall.
GRID = [
    (1, 1, 1, 5, 5, 3),
    (2, 3, 5, 7, 6, 3),
    (1, 4, 2, 6, 9, 1),
    (2, 2, 3, 8, 5, 2),
    (1, 3, 4, 9, 7, 4),
    (2, 5, 3, 10, 11, 7),
    (1, 2, 2, 3, 12, 3),
    (3, 6, 8, 7, 7, 5),
]
CASES = [(shape, p) for shape in GRID for p in range(shape[5])]
DTYPES = [torch.float32, torch.float64]


def _serves_train(impl, device):
    return impl.unavailable_reason(device, "train") is None


@pytest.mark.parametrize("name,device", impl_device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_matches_oracle_on_grid(name, device, dtype):
    """Every implementation, inference included: the output on every shape and padding."""
    impl = impl_for_tests(name)
    if not impl.supports_dtype(device, dtype):
        pytest.skip(f"{name} on {device} does not support {dtype}")
    for seed, (shape, p) in enumerate(CASES):
        x, params, _ = layer_inputs(shape, p, dtype, device, seed)
        assert_close(verify.check(impl, x, params, p), dtype, f"{name} {shape} padding {p}")


@pytest.mark.parametrize("name,device", impl_device_params(direction="train"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_oracle_on_grid(name, device, dtype):
    """Every implementation that trains: forward_train's output and all seven gradients."""
    impl = impl_for_tests(name)
    if not impl.supports_dtype(device, dtype):
        pytest.skip(f"{name} on {device} does not support {dtype}")
    for seed, (shape, p) in enumerate(CASES):
        x, params, gy = layer_inputs(shape, p, dtype, device, seed)
        assert_close(verify.check(impl, x, params, p, gy), dtype, f"{name} {shape} padding {p}")


@pytest.mark.parametrize("name,device", impl_device_params(torch.float32))
def test_non_contiguous_input(name, device):
    impl = impl_for_tests(name)
    base = torch.randn(2, 9, 7, 4, device=device).permute(0, 3, 1, 2)  # (2, 4, 9, 7), strided
    x = base[:, :, 1:, ::2]  # (2, 4, 8, 4), not contiguous
    assert not x.is_contiguous()
    params = impls.FlatParams.random(4, 3, 3, device=device, seed=3)
    gy = torch.randn(2, 3, 8, 4, device=device) if _serves_train(impl, device) else None
    assert_close(verify.check(impl, x, params, 1, gy), torch.float32, name)


@pytest.mark.parametrize("name,device", impl_device_params(torch.float64, direction="train"))
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_rank1_dense_equivalence(name, device, padding):
    """The outside truth: with zero inner biases the layer is F.conv2d with the rank-1
    filter at every padding, and its input gradient is F.conv2d's."""
    impl = impl_for_tests(name)
    x, params, gy = layer_inputs((2, 3, 4, 7, 6, 3), padding, torch.float64, device, seed=11)
    params = params.without_inner_biases()
    x_ref = x.clone().requires_grad_()
    y_ref = F.conv2d(x_ref, _rank1_filter(params), params.horizontal_bias, padding=padding)
    y_ref.backward(gy)
    # the composition is the layer: F.conv2d with it gives the float64 oracle's output and input
    # gradient (so `dense`, which is this convolution, is not checked against itself)
    torch.testing.assert_close(y_ref.detach(), reference.forward(x, params, padding).to(device))
    torch.testing.assert_close(x_ref.grad, reference.backward(x, params, padding, gy).input.to(device))
    prepared = impl.prepare(params)
    y, saved = impl.forward_train(x, prepared, padding=padding)
    torch.testing.assert_close(y, y_ref.detach())
    torch.testing.assert_close(impl.backward(saved, gy).input, x_ref.grad)


def _rank1_filter(params):
    """W[n, c, i, j] = lateral[n, c] vertical[n, i] horizontal[n, j], composed here (not by
    FlatParams.dense_weight, which the dense implementation uses)."""
    return torch.einsum("nc,ni,nj->ncij", params.lateral, params.vertical, params.horizontal)


@pytest.mark.parametrize("name,device", impl_device_params(torch.float64))
def test_rank1_with_biases_at_padding_zero(name, device):
    impl = impl_for_tests(name)
    x, params, _ = layer_inputs((2, 3, 4, 6, 8, 3), 0, torch.float64, device, seed=12)
    # the dense bias is the layer's output on a zero k x k input (the oracle's)
    bias = reference.forward(torch.zeros(1, 3, 3, 3, dtype=torch.float64), params.to(device="cpu"), 0)[0, :, 0, 0]
    y_ref = F.conv2d(x, _rank1_filter(params), bias.to(device))
    torch.testing.assert_close(y_ref, reference.forward(x, params, 0).to(device))
    torch.testing.assert_close(impl.forward(x, impl.prepare(params)), y_ref)


@pytest.mark.parametrize("name,device", impl_device_params(torch.float32, direction="train"))
def test_backward_does_not_mutate_saved(name, device):
    impl = impl_for_tests(name)
    x, params, gy = layer_inputs((2, 3, 4, 6, 6, 3), 1, torch.float32, device, seed=5)
    _, saved = impl.forward_train(x, impl.prepare(params), padding=1)
    first = impl.backward(saved, gy).tensors()
    second = impl.backward(saved, gy).tensors()
    for field in first:
        torch.testing.assert_close(first[field], second[field], rtol=0, atol=0)


@pytest.mark.parametrize("name,device", impl_device_params(torch.float64, direction="train"))
def test_module_gradcheck(name, device):
    layer = impls.FlattenedConv2d(2, 3, 3, padding=1, impl=name, dtype=torch.float64, device=device, seed=0)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, device=device, requires_grad=True)
    inputs = (x, *layer.parameters())

    def run(x, *weights):
        return torch.func.functional_call(layer, dict(zip([n for n, _ in layer.named_parameters()], weights)), (x,))

    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-6)


def test_reference_matches_autograd_of_composed_conv2d():
    """The oracle itself checked against autograd through three F.conv2d calls."""
    x, params, gy = layer_inputs((2, 3, 5, 7, 6, 4), 2, torch.float64, "cpu", seed=21)
    t = {k: v.clone().requires_grad_() for k, v in params.tensors().items()}
    xr = x.clone().requires_grad_()
    n = params.out_channels
    t1 = F.conv2d(xr, t["lateral"][:, :, None, None], t["lateral_bias"])
    t2 = F.conv2d(t1, t["vertical"][:, None, :, None], t["vertical_bias"], padding=(2, 0), groups=n)
    y = F.conv2d(t2, t["horizontal"][:, None, None, :], t["horizontal_bias"], padding=(0, 2), groups=n)
    y.backward(gy)
    torch.testing.assert_close(reference.forward(x, params, 2), y.detach())
    g = reference.backward(x, params, 2, gy)
    torch.testing.assert_close(g.input, xr.grad)
    for field, value in t.items():
        torch.testing.assert_close(getattr(g, field), value.grad, msg=field)


def test_cudnn_index_algebra_on_cpu():
    """The cudnn implementation's backward (weight gradients as convolutions, input
    gradients as transposed convolutions) checked on the CPU with PyTorch's reference
    convolutions standing in for cuDNN's: only the dispatch differs on a GPU."""

    class CudnnOnCpu(Cudnn):
        name, devices, dtypes = "cudnn", ("cpu",), {"cpu": (torch.float64,)}

        def _dependency_reason(self, device_type):
            return None

    impl = CudnnOnCpu(
        conv=lambda inp, w, padding, groups: F.conv2d(inp, w, None, 1, padding, 1, groups),
        conv_transpose=lambda g, w, padding, groups: F.conv_transpose2d(g, w, None, 1, padding, 0, groups),
    )
    for seed, (shape, p) in enumerate(CASES[::3]):
        x, params, gy = layer_inputs(shape, p, torch.float64, "cpu", seed)
        assert_close(verify.check(impl, x, params, p, gy), torch.float64, f"cudnn algebra {shape} p={p}")


# Random shapes for the implementations that train in float64 on this CPU, except those
# that compile per shape (every drawn shape would cost a compilation of seconds; the grid
# above covers them on every kind of odd shape).
CPU_FLOAT64 = [n for n in impls.names() if impls.get(n).unavailable_reason("cpu", "train") is None
               and impls.get(n).supports_dtype("cpu", torch.float64) and impls.get(n).compile_stats() is None]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    b=st.integers(1, 3), c=st.integers(1, 5), n=st.integers(1, 5), k=st.integers(1, 6),
    extra_h=st.integers(0, 6), extra_w=st.integers(0, 6), data=st.data(),
)
def test_property_random_shapes(b, c, n, k, extra_h, extra_w, data):
    p = data.draw(st.integers(0, k - 1), label="padding")
    h, w = max(1, k - 2 * p + extra_h), max(1, k - 2 * p + extra_w)
    name = data.draw(st.sampled_from(CPU_FLOAT64), label="impl")
    x, params, gy = layer_inputs((b, c, n, h, w, k), p, torch.float64, "cpu", seed=b + c + n + k)
    assert_close(verify.check(impls.get(name), x, params, p, gy), torch.float64, name)
