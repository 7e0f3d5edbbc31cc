"""The `openvino` peer (impls/openvino_impl.py): what is particular to it.

Its numbers against the oracle are in test_correctness.py and test_contract.py with
every implementation; here: the properties the compiled model reports (f32 precision,
threads, one stream, the latency hint, no pinning), compile_stats and the cache (a
repeated call compiles nothing, equal parameters share the compiled model, changed ones
do not, by value), that input and output are torch's memory, the inference-only and
float32-only declarations, bad inputs, a missing package, and that the module imports
no runtime.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import impls
from impls.openvino_impl import OpenVino


def _available():
    reason = impls.get("openvino").unavailable_reason("cpu")
    if reason is not None:
        pytest.skip(f"openvino on cpu: {reason}")


def _layer(c=3, n=4, k=3, b=2, h=6, w=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=gen), impls.FlatParams.random(c, n, k, seed=seed + 1)


def _torch(x, params, padding):
    t = impls.get("torch")
    return t.forward(x, t.prepare(params), padding=padding)


def test_import_loads_no_openvino():
    code = textwrap.dedent("""
        import sys
        import impls.openvino_impl, impls
        impls.get("openvino")
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("openvino", "onnx", "onnxruntime")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_openvino_sends_no_telemetry_and_forks_nothing():
    """`import openvino` alone would send a usage event from a forked process (its model
    converter's telemetry): through this implementation nothing forks and the converter
    holds OpenVINO's telemetry stub."""
    _available()
    code = textwrap.dedent("""
        import os, sys
        forks = []
        real = os.fork
        os.fork = lambda: forks.append(1) or real()
        import torch, impls
        impl = impls.get("openvino")
        assert impl.unavailable_reason("cpu") is None
        x, p = torch.randn(1, 2, 5, 5), impls.FlatParams.random(2, 2, 3, seed=1)
        impl.forward(x, impl.prepare(p), padding=1)
        from openvino.tools.ovc import telemetry_utils
        print(len(forks), telemetry_utils.tm.__name__, "openvino_telemetry" in sys.modules)
    """)
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # CI=true alone would turn it off
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "openvino.tools.ovc.telemetry_stub", "False"], out.stdout


def test_declarations():
    impl = impls.get("openvino")
    assert impl.role == "peer" and impl.devices == ("cpu",) and impl.directions == ("forward",)
    assert impl.compiles == "graphs" and impl.extras == ("peers",)
    assert impl.dtypes == {"cpu": (torch.float32,)}
    for direction in ("backward", "train"):
        assert impl.unavailable_reason("cpu", direction) == f"openvino serves inference only (no {direction})"
    assert impl.unavailable_reason("cuda") == "openvino runs on cpu only, not cuda"


# ---- the compiled model's properties ------------------------------------------------------
def test_compiled_model_reports_f32_the_threads_one_stream_and_the_latency_hint():
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hint

    _available()
    impl = OpenVino()
    x, params = _layer()
    prepared = impl.prepare(params)
    for threads in (1, 2):
        impl.set_num_threads(threads)
        impl.forward(x, prepared, padding=1)
        compiled = prepared.extra["models"][(tuple(x.shape), 1, threads)].compiled
        # f32, not the bf16 the CPU device defaults to on AVX-512-BF16/AMX machines
        assert compiled.get_property(hint.inference_precision) == ov.Type.f32
        assert compiled.get_property(props.inference_num_threads) == threads
        assert int(str(compiled.get_property(props.num_streams))) == 1
        # the compiled model reports the hint as its name (the device, as the enum)
        assert str(compiled.get_property(hint.performance_mode)).rpartition(".")[2] == "LATENCY"
        assert compiled.get_property(hint.enable_cpu_pinning) is False
        info = impl.runtime_info()["compiled"]
        assert info["INFERENCE_PRECISION_HINT"] == "f32" and info["INFERENCE_NUM_THREADS"] == threads
        assert info["NUM_STREAMS"] == 1 and info["PERFORMANCE_HINT"] == "LATENCY"
        assert info["ENABLE_CPU_PINNING"] is False and info["EXECUTION_DEVICES"] == ["CPU"]


def test_every_convolution_runs_in_f32_in_the_exec_graph():
    """The read-back hint is one thing; the nodes the plugin actually runs are another."""
    _available()
    impl = OpenVino()
    x, params = _layer(c=16, n=16, h=8, w=8)
    prepared = impl.prepare(params)
    impl.forward(x, prepared, padding=1)
    (compiled,) = prepared.extra["models"].values()
    convs = []
    for op in compiled.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Convolution", "GroupConvolution"):
            convs.append((info["primitiveType"].astype(str), info["outputPrecisions"].astype(str)))
    assert len(convs) == 3, convs
    assert all(precision == "f32" and "bf16" not in prim for prim, precision in convs), convs


def test_runtime_info_and_threads():
    import openvino as ov

    _available()
    impl = OpenVino()
    info = impl.runtime_info()
    assert info["openvino"] == ov.__version__ and info["device"] == "CPU" and info["compiled"] is None
    assert info["requested"]["INFERENCE_NUM_THREADS"] == torch.get_num_threads()
    assert info["requested"]["threads_from"] == "torch.get_num_threads()"
    assert "ONNX" in info["model_source"] and "shared_memory" in info["io"]
    impl.set_num_threads(3)
    assert impl.threads() == 3 and impl.runtime_info()["requested"]["threads_from"] == "set_num_threads"
    with pytest.raises(TypeError, match="threads"):
        impl.set_num_threads(1.5)
    with pytest.raises(ValueError, match="threads"):
        impl.set_num_threads(0)
    assert impl.threads() == 3


# ---- compile_stats and the cache ----------------------------------------------------------
def test_compiles_once_per_parameters_shape_padding_and_threads(capfd):
    _available()
    impl = OpenVino()
    assert impl.compile_stats() == {"compilations": 0, "compile_seconds": 0.0}
    x, params = _layer()
    prepared = impl.prepare(params)
    assert impl.compile_stats()["compilations"] == 0  # nothing before the first shape
    capfd.readouterr()
    y = impl.forward(x, prepared, padding=1)
    out, err = capfd.readouterr()
    assert (out, err) == ("", ""), "exporting and compiling must print nothing"
    first = impl.compile_stats()
    assert first["compilations"] == 1 and first["compile_seconds"] > 0
    assert isinstance(first["compilations"], int) and isinstance(first["compile_seconds"], float)
    torch.testing.assert_close(y, _torch(x, params, 1))
    for _ in range(3):
        assert torch.equal(impl.forward(x, prepared, padding=1), y)
    assert impl.compile_stats() == first  # a repeated call compiles nothing
    impl.forward(x, prepared, padding=0)
    impl.forward(x[:1], prepared, padding=1)
    assert impl.compile_stats()["compilations"] == 3
    # equal parameters (other tensors, the same values) share the compiled models ...
    same = impl.prepare(params.replace(**{k: v.clone() for k, v in params.tensors().items()}))
    assert same.extra["models"] is prepared.extra["models"]
    assert torch.equal(impl.forward(x, same, padding=1), y)
    assert impl.compile_stats()["compilations"] == 3
    # ... and changed ones, in place too, get their own
    changed = params.replace(lateral=params.lateral.clone())
    changed.lateral.mul_(2)
    other = impl.prepare(changed)
    assert other.extra["models"] is not prepared.extra["models"]
    y2 = impl.forward(x, other, padding=1)
    assert impl.compile_stats()["compilations"] == 4
    torch.testing.assert_close(y2, _torch(x, changed, 1))
    assert not torch.equal(y2, y)
    # a parameter set changed in place after its prepare is not the one cached
    params.horizontal_bias.add_(1)
    y3 = impl.forward(x, impl.prepare(params), padding=1)
    assert impl.compile_stats()["compilations"] == 5
    torch.testing.assert_close(y3, y + 1)
    # another thread count is another compiled model
    impl.set_num_threads(2 if impl.threads() == 1 else 1)
    impl.forward(x, prepared, padding=1)
    assert impl.compile_stats()["compilations"] == 6
    assert impl.compile_stats()["compile_seconds"] > first["compile_seconds"]


def test_recent_parameter_sets_are_bounded():
    _available()
    impl = OpenVino()
    x, params = _layer(c=2, n=2, h=4, w=4)
    first = impl.prepare(params)
    for seed in range(impl._recent.size):
        impl.prepare(impls.FlatParams.random(2, 2, 3, seed=100 + seed))
    assert len(impl._recent._entries) == impl._recent.size
    # the first set fell out: preparing it again starts an empty cache
    assert impl.prepare(params).extra["models"] is not first.extra["models"]


# ---- memory ---------------------------------------------------------------------------------
def test_reads_the_input_in_place_and_writes_a_fresh_torch_output():
    _available()
    impl = OpenVino()
    x, params = _layer()
    prepared = impl.prepare(params)
    y1 = impl.forward(x, prepared, padding=1)
    (compiled,) = prepared.extra["models"].values()
    y2 = impl.forward(x, prepared, padding=1)
    request = compiled.request
    # the request's tensors are the torch tensors' memory: nothing copied on the way in or out
    assert request.get_input_tensor().data.ctypes.data == x.data_ptr()
    assert request.get_output_tensor().data.ctypes.data == y2.data_ptr()
    assert isinstance(y1, torch.Tensor) and y1.is_contiguous() and y1.dtype == torch.float32
    assert y1.data_ptr() != y2.data_ptr()  # each call its own output: no aliasing of an earlier result
    assert torch.equal(y1, y2)
    # a non-contiguous input is made contiguous by the base class, and read correctly
    xt = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not xt.is_contiguous()
    assert torch.equal(impl.forward(xt, prepared, padding=1), y1)
    # an input that requires grad is read too (inference: no graph)
    assert torch.equal(impl.forward(x.clone().requires_grad_(), prepared, padding=1), y1)


# ---- bad inputs and missing dependencies -----------------------------------------------------
def test_refuses_float64_and_bad_inputs_with_clear_messages():
    _available()
    impl = OpenVino()
    assert not impl.supports_dtype("cpu", torch.float64)
    with pytest.raises(TypeError, match=r"openvino on cpu supports dtype torch.float32, got torch.float64"):
        impl.prepare(impls.FlatParams.random(3, 4, 3, dtype=torch.float64))
    x, params = _layer()
    prepared = impl.prepare(params)
    with pytest.raises(TypeError, match=r"x: openvino on cpu supports dtype torch.float32, got torch.float64"):
        impl.forward(x.double(), prepared, padding=1)
    with pytest.raises(ValueError, match="expected 3 channels"):
        impl.forward(torch.randn(2, 5, 6, 5), prepared, padding=1)
    with pytest.raises(ValueError, match="4-D"):
        impl.forward(x[0], prepared, padding=1)
    with pytest.raises(ValueError, match="padding"):
        impl.forward(x, prepared, padding=3)
    with pytest.raises(NotImplementedError, match="forward only"):
        impl.forward_train(x, prepared, padding=1)
    with pytest.raises(ValueError, match="not 'openvino'"):
        impl.forward(x, impls.get("torch").prepare(params), padding=1)
    assert impl.compile_stats()["compilations"] == 0  # nothing compiled for a refused call


def test_missing_openvino_is_a_one_line_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    impl = OpenVino()
    reason = impl.unavailable_reason("cpu")
    assert reason == "openvino is not installed (pip install flatconv[peers])"
    assert impl.runtime_info() == {"available": False, "reason": reason}
    with pytest.raises(ValueError, match="openvino is not installed"):
        impl.prepare(impls.FlatParams.random(3, 4, 3))


def test_missing_onnx_is_a_one_line_reason(monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setitem(sys.modules, "onnx", None)
    reason = OpenVino().unavailable_reason("cpu")
    assert reason == "onnx is not installed; torch.onnx.export needs it (pip install flatconv[peers])"
