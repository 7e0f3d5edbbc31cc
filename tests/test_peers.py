"""The peer runtimes: `torch_compile` (torch.compile) and `onnxruntime` (ONNX Runtime).

Their numbers against the oracle are in test_correctness.py with every implementation;
here: compile_stats (a new shape compiles once, a repeated call never), the inference-
only declaration, ONNX Runtime's session options and threads, quiet compilation, and
that `import impls` loads none of these runtimes.
"""

import subprocess
import sys
import textwrap

import pytest
import torch

import impls
from impls.onnxruntime_impl import OnnxRuntime
from impls.torch_compile import TorchCompile


def _available(name, device="cpu"):
    reason = impls.get(name).unavailable_reason(device)
    if reason is not None:
        pytest.skip(f"{name} on {device}: {reason}")
    return impls.get(name)


def _layer(c=3, n=4, k=3, b=2, h=6, w=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=gen), impls.FlatParams.random(c, n, k, seed=seed + 1)


def test_import_impls_loads_no_runtime_and_compiles_nothing():
    code = textwrap.dedent("""
        import sys, torch
        def loaded(before):
            return sorted(m for m in set(sys.modules) - before
                          if m.split(".")[0] in ("onnx", "onnxruntime", "onnxscript", "triton")
                          or m.startswith(("torch._inductor", "torch._dynamo", "torch.onnx")))
        before = set(sys.modules)
        import impls
        impls.names(), impls.get("torch_compile"), impls.get("onnxruntime")
        print(loaded(before))
        # Asking whether torch_compile can run imports no compiler stack either (onnxruntime's
        # answer needs onnxruntime itself).
        impls.get("torch_compile").unavailable_reason("cpu"), impls.get("torch_compile").runtime_info()
        print(loaded(before))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "[]"], out.stdout


# ---- the inference-only declaration --------------------------------------------------
def test_onnxruntime_declares_backward_and_train_unavailable_with_the_reason():
    impl = impls.get("onnxruntime")
    assert impl.directions == ("forward",) and impl.role == "peer"
    for direction in ("backward", "train"):
        assert impl.unavailable_reason("cpu", direction) == f"onnxruntime serves inference only (no {direction})"
    _available("onnxruntime")
    assert impl.unavailable_reason("cpu", "forward") is None
    x, params = _layer()
    prepared = impl.prepare(params)
    with pytest.raises(NotImplementedError, match="forward only"):
        impl.forward_train(x, prepared, padding=1)
    torch_impl = impls.get("torch")
    _, saved = torch_impl.forward_train(x, torch_impl.prepare(params), padding=1)
    with pytest.raises(NotImplementedError, match="forward only"):
        impl.backward(saved, torch.zeros(2, 4, 6, 5))


def test_onnxruntime_refuses_float64_as_a_dtype():
    impl = _available("onnxruntime")
    assert not impl.supports_dtype("cpu", torch.float64)  # ONNX Runtime's CPU Conv has no double kernel
    with pytest.raises(TypeError, match="dtype"):
        impl.prepare(impls.FlatParams.random(3, 4, 3, dtype=torch.float64))


# ---- compile_stats -------------------------------------------------------------------
def test_compile_stats_is_none_for_implementations_that_do_not_compile():
    for name in ("torch", "naive", "dense"):
        assert impls.get(name).compile_stats() is None
    for name in ("torch_compile", "onnxruntime"):
        stats = impls.get(name).compile_stats()
        assert set(stats) == {"compilations", "compile_seconds"}
        assert isinstance(stats["compilations"], int) and isinstance(stats["compile_seconds"], float)


def test_onnxruntime_compiles_once_per_parameters_shape_padding_and_threads(capfd):
    impl = OnnxRuntime()
    _available("onnxruntime")
    assert impl.compile_stats() == {"compilations": 0, "compile_seconds": 0.0}
    x, params = _layer()
    prepared = impl.prepare(params)
    assert impl.compile_stats()["compilations"] == 0  # export waits for the first shape
    capfd.readouterr()
    y = impl.forward(x, prepared, padding=1)
    out, err = capfd.readouterr()
    assert (out, err) == ("", ""), "exporting and building a session must print nothing"
    first = impl.compile_stats()
    assert first["compilations"] == 1 and first["compile_seconds"] > 0
    assert torch.equal(impl.forward(x, prepared, padding=1), y)
    assert impl.compile_stats() == first  # the same shape: the session is reused
    impl.forward(x, prepared, padding=0)
    impl.forward(x[:1], prepared, padding=1)
    assert impl.compile_stats()["compilations"] == 3
    # FlattenedConv2d prepares on every call: equal parameters share the sessions ...
    assert torch.equal(impl.forward(x, impl.prepare(params.replace(lateral=params.lateral.clone())), padding=1), y)
    assert impl.compile_stats()["compilations"] == 3
    # ... and changed ones (in place too) get their own export.
    changed = params.replace(lateral=params.lateral.clone())
    changed.lateral.mul_(2)
    y2 = impl.forward(x, impl.prepare(changed), padding=1)
    assert impl.compile_stats()["compilations"] == 4
    torch.testing.assert_close(y2, impls.get("torch").forward(x, impls.get("torch").prepare(changed), padding=1))
    assert not torch.equal(y2, y)
    # another thread count than the one in force (torch's, which an earlier test may have
    # left at 1: CI's lean run met it so) gets a session of its own
    impl.set_num_threads(2 if impl.threads() == 1 else 1)
    impl.forward(x, prepared, padding=1)
    assert impl.compile_stats()["compilations"] == 5
    assert impl.compile_stats()["compile_seconds"] > first["compile_seconds"]


def test_torch_compile_compiles_a_new_shape_once_and_never_on_a_repeated_call(capfd):
    impl = TorchCompile()  # a fresh instance: its counts start at zero
    _available("torch_compile")
    assert impl.compile_stats() == {"compilations": 0, "compile_seconds": 0.0}
    x, params = _layer(c=2, n=3, h=5, w=4, seed=40)
    prepared = impl.prepare(params)
    capfd.readouterr()
    y = impl.forward(x, prepared, padding=1)
    out, err = capfd.readouterr()
    assert (out, err) == ("", ""), "compiling must print nothing (dynamo and inductor stay quiet)"
    first = impl.compile_stats()
    assert first["compilations"] == 1 and first["compile_seconds"] > 0
    torch.testing.assert_close(y, impls.get("torch").forward(x, impls.get("torch").prepare(params), padding=1))
    for _ in range(3):
        impl.forward(x, prepared, padding=1)
    assert impl.compile_stats() == first
    # Frozen inference is compiled per parameter set: equal weights (another object) reuse
    # it, new weights of the same shapes compile once more.
    impl.forward(x, impl.prepare(params.replace(**{k: v.clone() for k, v in params.tensors().items()})), padding=1)
    assert impl.compile_stats() == first
    impl.forward(x, impl.prepare(impls.FlatParams.random(2, 3, 3, seed=99)), padding=1)
    assert impl.compile_stats()["compilations"] == 2
    first = impl.compile_stats()

    # Training: forward_train compiles its own (autograd) graph once; the backward graph
    # is compiled at most once more (lazily, at the first backward, unless AOTAutograd's
    # cache had it); repeated calls compile nothing.
    _, saved = impl.forward_train(x, prepared, padding=1)
    after_train = impl.compile_stats()["compilations"]
    assert after_train == 3
    gy = torch.randn(2, 3, 5, 4)
    g1 = impl.backward(saved, gy)
    after_backward = impl.compile_stats()
    assert after_backward["compilations"] in (3, 4)
    _, saved2 = impl.forward_train(x, prepared, padding=1)
    g2 = impl.backward(saved2, gy)
    impl.backward(saved, gy)
    assert impl.compile_stats() == after_backward
    for a, b in zip(g1.tensors().values(), g2.tensors().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # A compiled function per key: another padding is another compilation.
    impl.forward(x, prepared, padding=0)
    assert impl.compile_stats()["compilations"] == after_backward["compilations"] + 1


@pytest.mark.parametrize("freezing", [True, False])
def test_torch_compile_inference_is_frozen(freezing):
    """The inference graph is compiled with inductor's freezing: the weights are constants
    of the compiled code, so a later in-place change of the prepared weights does not reach
    it; unfrozen, the weights are graph inputs and it does. Training is never frozen."""
    impl = TorchCompile(freezing=freezing)
    _available("torch_compile")
    x, params = _layer(c=3, n=4, h=6, w=5, seed=45)
    prepared = impl.prepare(params)
    y = impl.forward(x, prepared, padding=1)
    assert impl.runtime_info()["freezing"] is freezing
    with torch.no_grad():
        prepared.params.lateral.mul_(2.0)
    changed = not torch.equal(impl.forward(x, prepared, padding=1), y)
    assert changed is not freezing
    y_train, _ = impl.forward_train(x, prepared, padding=1)  # the training graph takes the weights as inputs
    torch.testing.assert_close(y_train, impls.get("torch").forward(x, impls.get("torch").prepare(prepared.params), 1))


def test_torch_compile_keys_include_the_thread_count():
    """Inductor's C++ kernels bake torch.get_num_threads() in: another count is another key."""
    impl = TorchCompile()
    _available("torch_compile")
    x, params = _layer(c=2, n=2, h=4, w=4, seed=50)
    prepared = impl.prepare(params)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        impl.forward(x, prepared, padding=1)
        torch.set_num_threads(2)
        impl.forward(x, prepared, padding=1)
    finally:
        torch.set_num_threads(old)
    assert impl.compile_stats()["compilations"] == 2
    assert impl.runtime_info()["compiled_functions"] == 2


def test_torch_compile_counts_after_dynamo_drops_its_callbacks():
    """torch._dynamo.reset() clears every compile callback; the next call registers again."""
    from torch._dynamo.callback import callback_handler

    impl = TorchCompile()
    _available("torch_compile")
    x, params = _layer(c=2, n=2, h=5, w=5, seed=60)
    prepared = impl.prepare(params)
    impl.forward(x, prepared, padding=2)
    assert impl.compile_stats()["compilations"] == 1
    saved = list(callback_handler.start_callbacks), list(callback_handler.end_callbacks)
    callback_handler.clear()
    try:
        impl.forward(x, prepared, padding=1)
        assert impl.compile_stats()["compilations"] == 2
    finally:
        for cb in saved[0]:
            if cb not in callback_handler.start_callbacks:
                callback_handler.register_start_callback(cb)
        for cb in saved[1]:
            if cb not in callback_handler.end_callbacks:
                callback_handler.register_end_callback(cb)


# ---- torch_compile as registered, on the grid's oddest cases -------------------------------
# The grid in test_correctness.py runs torch_compile without inductor's layout optimization
# (see tests/_support.py); these run the registered configuration, with its C++ layout
# kernels: one channel and batch 1, k = 1, even k, k = 7 at the largest padding.
ODD_CASES = [
    ((1, 1, 1, 5, 5, 3), 2, torch.float32),
    ((1, 4, 2, 6, 9, 1), 0, torch.float32),
    ((2, 2, 3, 8, 5, 2), 1, torch.float32),
    ((2, 5, 3, 10, 11, 7), 6, torch.float32),
    ((1, 3, 4, 9, 7, 4), 3, torch.float64),
]


@pytest.mark.parametrize("shape,padding,dtype", ODD_CASES, ids=[f"{s}-p{p}-{d}" for s, p, d in ODD_CASES])
def test_registered_torch_compile_on_odd_shapes(shape, padding, dtype):
    from _support import assert_close, layer_inputs
    from impls import verify

    impl = _available("torch_compile")
    x, params, gy = layer_inputs(shape, padding, dtype, "cpu", seed=7)
    assert_close(verify.check(impl, x, params, padding, gy), dtype, f"torch_compile {shape} p={padding}")


# ---- ONNX Runtime's session ------------------------------------------------------------
def test_onnxruntime_session_options_and_threads():
    impl = OnnxRuntime()
    _available("onnxruntime")
    x, params = _layer()
    prepared = impl.prepare(params)
    impl.set_num_threads(1)
    impl.forward(x, prepared, padding=1)
    (session,) = prepared.extra["sessions"].values()
    options = session.session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    import onnxruntime as ort

    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    info = impl.runtime_info()
    spin = "1" if info["spinning_tuned"]["spinning"] else "0"  # the tuned choice is the kept session's
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == spin
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == spin
    assert session.session.get_providers() == ["CPUExecutionProvider"]
    assert info["onnxruntime"] == ort.__version__ and info["providers"]["cpu"] == "CPUExecutionProvider"
    assert info["session_options"]["intra_op_num_threads"] == 1
    assert info["session_options"]["allow_spinning"].startswith("tuned")
    with pytest.raises(TypeError, match="threads"):
        impl.set_num_threads(1.5)
    with pytest.raises(ValueError, match="threads"):
        impl.set_num_threads(0)


def test_onnxruntime_writes_into_a_torch_tensor():
    impl = _available("onnxruntime")
    x, params = _layer()
    prepared = impl.prepare(params)
    y1 = impl.forward(x, prepared, padding=1)
    y2 = impl.forward(x, prepared, padding=1)
    assert isinstance(y1, torch.Tensor) and y1.is_contiguous() and y1.dtype == torch.float32
    assert y1.data_ptr() != y2.data_ptr()  # each call its own output: no aliasing of an earlier result
    assert torch.equal(y1, y2)


# ---- missing dependencies ----------------------------------------------------------------
def test_missing_onnxruntime_is_a_one_line_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    reason = OnnxRuntime().unavailable_reason("cpu")
    assert reason == "onnxruntime is not installed (pip install flatconv[peers])"
    assert OnnxRuntime().runtime_info() == {"available": False, "reason": reason}


def test_missing_cpp_compiler_is_a_one_line_reason(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    reason = TorchCompile().unavailable_reason("cpu")
    assert reason and "C++ compiler" in reason and "\n" not in reason
