"""Shared test helpers: which (implementation, device) pairs can run here, and which
instance of an implementation runs the oracle grid."""

import functools

import pytest
import torch

import impls
from impls import verify


def impl_device_params(dtype=None, direction=None):
    """pytest params for every registered (implementation, device) pair, skipped with
    the implementation's own reason where it cannot run here (or cannot compute
    `direction`: an inference-only runtime has no backward)."""
    out = []
    for name in impls.names():
        impl = impls.get(name)
        for device in impl.devices:
            marks = []
            reason = impl.unavailable_reason(device, direction)
            if reason is not None:
                marks.append(pytest.mark.skip(reason=f"{name} on {device}: {reason}"))
            elif dtype is not None and not impl.supports_dtype(device, dtype):
                marks.append(pytest.mark.skip(reason=f"{name} on {device} does not support {dtype}"))
            if device == "cuda":
                marks.append(pytest.mark.gpu)
            out.append(pytest.param(name, device, id=f"{name}-{device}", marks=marks))
    return out


def _light_torch_compile():
    from impls.torch_compile import TorchCompile

    return TorchCompile(options={"layout_optimization": False})


# torch_compile compiles every new (shape, padding, dtype) three times (inference graph,
# training forward, backward), statically, as it is benchmarked. With inductor's default
# layout optimization each graph also builds NCHW <-> NHWC copy kernels in C++ (about 1.4 s
# of g++ each on a loaded 2-core machine): the grid below alone took 12 minutes from a cold
# cache. The tests shared by every implementation (test_correctness.py, test_contract.py)
# run it with layout_optimization off: the same class, wiring, convolutions, AOTAutograd
# graphs and backward, without the C++ copy kernels (about 1 s a graph). The registered
# configuration is tested in test_peers.py (the grid's oddest cases, compile_stats), by
# test_models.py and test_module_gradcheck (through FlattenedConv2d), and on every
# benchmarked shape by the harness's correctness gate.
TEST_VARIANTS = {"torch_compile": _light_torch_compile}


@functools.cache
def impl_for_tests(name):
    """The instance of implementation `name` that the shared tests run: the registered one,
    or its cheaper-to-compile variant from TEST_VARIANTS."""
    make = TEST_VARIANTS.get(name)
    return make() if make is not None else impls.get(name)


def layer_inputs(shape, padding, dtype=torch.float32, device="cpu", seed=0):
    """Seeded x, parameters and output gradient for (batch, C, N, H, W, k) and a padding."""
    b, c, n, h, w, k = shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64).to(device, dtype)
    params = impls.FlatParams.random(c, n, k, dtype=dtype, device=device, seed=seed + 1)
    oh, ow = h + 2 * padding - k + 1, w + 2 * padding - k + 1
    grad_y = torch.randn(b, n, oh, ow, generator=gen, dtype=torch.float64).to(device, dtype)
    return x, params, grad_y


def assert_close(errors, dtype, what):
    """Every relative error within the dtype's tolerance, else a message naming them."""
    tol = verify.tolerance(dtype)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"{what}: relative errors above {tol}: {bad}"
