"""The registry, FlatParams, shape arithmetic and the refusal of bad input."""

import pytest
import torch

import impls
from impls import shapes

from _support import impl_device_params, impl_for_tests

REQUIRED = {"naive", "im2col", "torch", "cudnn", "dense"}


def test_names_sorted_and_complete():
    names = impls.names()
    assert names == sorted(names)
    assert REQUIRED <= set(names)


def test_unknown_name_lists_known():
    with pytest.raises(ValueError) as e:
        impls.get("nope")
    for name in impls.names():
        assert name in str(e.value)
    with pytest.raises(TypeError, match="name"):
        impls.get(3)


def test_every_implementation_declares_itself():
    for name in impls.names():
        impl = impls.get(name)
        assert impl.name == name and impl.devices and impl.description
        for device in impl.devices:
            assert impl.supports_dtype(device, torch.float32), f"{name} must support float32 on {device}"
            reason = impl.unavailable_reason(device)
            assert reason is None or (isinstance(reason, str) and reason and "\n" not in reason)
        assert impl.unavailable_reason("meta") is not None


def test_every_implementation_declares_role_and_directions():
    from impls.base import DIRECTIONS, ROLES

    baselines = [n for n in impls.names() if impls.get(n).baseline]
    assert baselines == ["dense"]  # one denominator for every speedup
    for name in impls.names():
        impl = impls.get(name)
        assert impl.role in ROLES, name
        assert "forward" in impl.directions and set(impl.directions) <= set(DIRECTIONS), name


class _InferenceOnly(impls.get("torch").__class__):
    name = "inference_only"
    directions = ("forward",)


def test_inference_only_implementation_says_so_per_direction():
    impl = _InferenceOnly()
    assert impl.unavailable_reason("cpu") is None
    assert impl.unavailable_reason("cpu", "forward") is None
    assert impl.unavailable_reason("cpu", "stage:lateral") is None  # a stage is a piece of inference
    for direction in ("backward", "train"):
        assert impl.unavailable_reason("cpu", direction) == f"inference_only serves inference only (no {direction})"
    assert impl.unavailable_reason("cuda", "backward") != impl.unavailable_reason("cpu", "backward")
    with pytest.raises(ValueError, match="direction"):
        impl.unavailable_reason("cpu", "sideways")
    prepared = impl.prepare(impls.FlatParams.random(3, 4, 3))
    x = torch.randn(1, 3, 6, 6)
    assert impl.forward(x, prepared, padding=1).shape == (1, 4, 6, 6)
    with pytest.raises(NotImplementedError, match="forward only"):
        impl.forward_train(x, prepared, padding=1)


def test_module_runs_inference_through_forward_and_refuses_training_without_backward(monkeypatch):
    from impls import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    impls.register(_InferenceOnly())
    layer = impls.FlattenedConv2d(3, 4, 3, padding=1, impl="inference_only", seed=0)
    twin = impls.FlattenedConv2d(3, 4, 3, padding=1, impl="torch", seed=0)
    x = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        assert torch.equal(layer(x), twin(x))
    with pytest.raises(NotImplementedError, match="forward only"):
        layer(x).sum().backward()


def test_cuda_implementations_explain_missing_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    for name in impls.names():
        impl = impls.get(name)
        if "cuda" in impl.devices:
            assert impl.unavailable_reason("cuda"), name
    assert "cuda" in impls.get("cudnn").devices and impls.get("cudnn").unavailable_reason("cpu")


def test_register_refuses_duplicates_and_non_implementations():
    with pytest.raises(ValueError, match="already registered"):
        impls.register(impls.get("torch"))
    with pytest.raises(TypeError, match="impl"):
        impls.register(object())


def test_flatparams_random_is_seeded_and_non_zero():
    a = impls.FlatParams.random(3, 4, 5, seed=7)
    b = impls.FlatParams.random(3, 4, 5, seed=7)
    c = impls.FlatParams.random(3, 4, 5, seed=8)
    for field, value in a.tensors().items():
        assert torch.equal(value, getattr(b, field))
        assert not torch.equal(value, getattr(c, field))
        assert value.abs().min() > 0
    assert (a.in_channels, a.out_channels, a.kernel_size) == (3, 4, 5)
    assert impls.FlatParams.random(3, 4, 5, seed=7, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("field,bad,error,match", [
    ("lateral", torch.zeros(4), ValueError, "lateral"),
    ("vertical", torch.zeros(5, 3), ValueError, "vertical"),
    ("horizontal", torch.zeros(4, 2), ValueError, "horizontal"),
    ("lateral_bias", torch.zeros(3), ValueError, "lateral_bias"),
    ("vertical_bias", torch.zeros(4, 1), ValueError, "vertical_bias"),
    ("horizontal_bias", torch.zeros(4, dtype=torch.float64), TypeError, "horizontal_bias"),
    ("vertical", torch.zeros(4, 3, dtype=torch.int64), TypeError, "vertical"),
    ("lateral", [[1.0]], TypeError, "lateral"),
    ("vertical_bias", torch.zeros(4, device="meta"), ValueError, "vertical_bias"),
])
def test_flatparams_refuses_disagreeing_shapes(field, bad, error, match):
    good = impls.FlatParams.random(2, 4, 3).tensors()
    good[field] = bad
    with pytest.raises(error, match=match):
        impls.FlatParams(**good)


@pytest.mark.parametrize("args,error", [((0, 4, 3), ValueError), ((2, 4, 3.0), TypeError), ((True, 4, 3), TypeError)])
def test_flatparams_random_refuses_bad_sizes(args, error):
    with pytest.raises(error):
        impls.FlatParams.random(*args)


def _good(device="cpu"):
    return torch.randn(2, 3, 6, 5, device=device), impls.FlatParams.random(3, 4, 3, device=device)


BAD_INPUTS = [
    # (description, make(x, params) -> (x, params, padding), error, text the message names)
    ("wrong rank", lambda x, p: (x[0], p, 1), ValueError, "x"),
    ("channel mismatch", lambda x, p: (x[:, :2], p, 1), ValueError, "channels"),
    ("negative padding", lambda x, p: (x, p, -1), ValueError, "padding"),
    ("padding >= k", lambda x, p: (x, p, 3), ValueError, "padding"),
    ("padding not int", lambda x, p: (x, p, 1.0), TypeError, "padding"),
    ("padding bool", lambda x, p: (x, p, True), TypeError, "padding"),
    ("kernel longer than padded input", lambda x, p: (x[:, :, :1, :], p, 0), ValueError, "longer"),
    ("unsupported dtype", lambda x, p: (x.half(), p, 1), TypeError, "dtype"),
    ("integer input", lambda x, p: (x.long(), p, 1), TypeError, "dtype"),
    ("input/params dtype differ", lambda x, p: (x.double(), p, 1), TypeError, "dtype"),
    ("not a tensor", lambda x, p: (x.tolist(), p, 1), TypeError, "x"),
    ("input on another device", lambda x, p: (x.to("meta"), p, 1), ValueError, "device"),
    ("empty batch", lambda x, p: (x[:0], p, 1), ValueError, "x"),
]


@pytest.mark.parametrize("name,device", impl_device_params(torch.float32))
@pytest.mark.parametrize("what,make,error,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_clearly(name, device, what, make, error, match):
    impl = impl_for_tests(name)
    x, params = _good(device)
    prepared = impl.prepare(params)
    bad_x, _, padding = make(x, params)
    if what == "input/params dtype differ" and not impl.supports_dtype(device, torch.float64):
        pytest.skip("float64 unsupported: refused as an unsupported dtype instead")
    calls = (impl.forward, impl.forward_train) if impl.unavailable_reason(device, "train") is None else (impl.forward,)
    for call in calls:
        with pytest.raises(error, match=match):
            call(bad_x, prepared, padding=padding)


@pytest.mark.parametrize("name,device", impl_device_params(torch.float32))
def test_bad_prepare_and_backward_arguments(name, device):
    impl = impl_for_tests(name)
    x, params = _good(device)
    with pytest.raises(TypeError, match="params"):
        impl.prepare(params.tensors())
    with pytest.raises(ValueError, match="params"):
        impl.prepare(params.to("meta"))
    prepared = impl.prepare(params)
    with pytest.raises(TypeError, match="prepared"):
        impl.forward(x, params, padding=1)
    other = impls.get("torch" if name != "torch" else "im2col")
    if other.unavailable_reason(device) is None:
        with pytest.raises(ValueError, match="prepared"):
            impl.forward(x, other.prepare(params), padding=1)
    if impl.unavailable_reason(device, "train") is not None:
        with pytest.raises(NotImplementedError, match="forward only"):
            impl.forward_train(x, prepared, padding=1)
        return
    y, saved = impl.forward_train(x, prepared, padding=1)
    with pytest.raises(ValueError, match="grad_y"):
        impl.backward(saved, torch.randn(2, 4, 5, 5, device=device))
    with pytest.raises(TypeError, match="grad_y"):
        impl.backward(saved, torch.randn_like(y).double())
    with pytest.raises(TypeError, match="saved"):
        impl.backward(prepared, torch.randn_like(y))


def test_cuda_only_implementation_refuses_cpu_tensors():
    x, params = _good()
    with pytest.raises(ValueError, match="cudnn"):
        impls.get("cudnn").prepare(params)


def test_mixed_devices_between_input_and_params():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to put input and parameters on different devices")
    impl = impls.get("torch")
    x, params = _good()
    with pytest.raises(ValueError, match="device"):
        impl.forward(x.cuda(), impl.prepare(params), padding=1)


def test_module_refuses_bad_padding_and_unknown_impl():
    with pytest.raises(ValueError, match="padding"):
        impls.FlattenedConv2d(3, 4, 3, padding=3)
    with pytest.raises(ValueError, match="known"):
        impls.FlattenedConv2d(3, 4, 3, impl="nope")


def test_shape_arithmetic():
    s = impls.LayerShape(batch=2, in_channels=3, out_channels=4, height=8, width=6, kernel_size=3, padding=0)
    assert s.output_shape == (2, 4, 6, 4)
    assert s.params("flat") == 4 * 3 + 2 * 4 * 3 + 3 * 4
    assert s.params("dense") == 4 * 3 * 9 + 4
    # Forward FLOPs: 2 per multiply-add + 1 per bias add, stage by stage.
    assert s.flops("forward") == (2 * 3 + 1) * 2 * 4 * 8 * 6 + (2 * 3 + 1) * 2 * 4 * 6 * 6 + (2 * 3 + 1) * 2 * 4 * 6 * 4
    assert s.flops("train") == s.flops("forward") + s.flops("backward")
    assert s.flops("forward", "dense") == (2 * 3 * 9 + 1) * 2 * 4 * 6 * 4
    assert s.min_bytes("forward") == 4 * (2 * 3 * 8 * 6 + s.params() + 2 * 4 * 6 * 4)
    with pytest.raises(ValueError, match="direction"):
        s.flops("sideways")
    # The paper's ~90% reduction for a 64 -> 64, 3x3 layer.
    assert shapes.flat_param_count(64, 64, 3) / shapes.dense_param_count(64, 64, 3) < 0.15
