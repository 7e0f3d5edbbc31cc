"""The `jax` peer (impls/jax_impl.py): what is particular to it.

Its numbers against the float64 oracle are in test_correctness.py and test_contract.py
with every implementation; here: the CPU client's thread count (fixed at its creation,
honoured, recorded, and refused afterwards), compile_stats (one compilation per key,
none on a repeated call, checked against JAX's own count of XLA compilations), backward
(repeatable, leaves `saved` as it was, uses the kept residuals), the DLPack exchange (no
copy where none is claimed, the one copy where it is), results ready at return, the
missing-package reasons, float64, and bad input.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import impls
from impls import registry, verify
from impls.jax_impl import Jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _available(device="cpu"):
    reason = impls.get("jax").unavailable_reason(device)
    if reason is not None:
        pytest.skip(f"jax on {device}: {reason}")
    return impls.get("jax")


def _fresh():
    """A new instance (its own compile counts and thread request) on the process's client."""
    _available()
    return Jax()


def _layer(c=3, n=4, k=3, b=2, h=6, w=5, seed=0, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64).to(device, dtype)
    return x, impls.FlatParams.random(c, n, k, seed=seed + 1, dtype=dtype, device=device)


def _run(code: str, env: dict | None = None, timeout: int = 120) -> str:
    """`code` in a fresh interpreter (a fresh JAX client) from the repository root."""
    full_env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    for var in ("PJRT_NPROC", "NPROC"):
        if env is None or var not in env:
            full_env.pop(var, None)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                         env=full_env, cwd=ROOT, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


# ---- declarations, import, missing packages -------------------------------------------
def test_declares_a_compiling_peer_with_every_direction():
    impl = impls.get("jax")
    assert (impl.role, impl.compiles, impl.extras, impl.devices) == ("peer", "graphs", ("peers",), ("cpu", "cuda"))
    assert impl.directions == ("forward", "backward", "train")
    assert impl.supports_dtype("cpu", torch.float64) and not impl.supports_dtype("cuda", torch.float64)
    assert registry.problems(impl) == []


def test_import_creates_no_client_and_runtime_info_before_a_call_imports_nothing():
    out = _run("""
        import sys
        import impls
        impl = impls.get("jax")
        info = impl.runtime_info()
        print("jax" in sys.modules, info["cpu_client"]["created"], info["jax"] is not None)
        impl.unavailable_reason("cpu")  # imports jax (to know it loads) but creates no client
        from jax._src import xla_bridge
        print("jax" in sys.modules, xla_bridge.backends_are_initialized(), sys.modules["jax"].config.jax_enable_x64)
    """)
    assert out.split("\n")[:2] == ["False False True", "True False True"], out


def test_without_jax_the_module_imports_and_the_reason_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)  # `import jax` now raises ImportError
    impl = Jax()
    want = "jax is not installed (pip install flatconv[peers])"
    assert impl.unavailable_reason("cpu") == want
    with pytest.raises(ValueError, match=r"jax is unavailable on cpu: jax is not installed \(pip install"):
        impl.prepare(impls.FlatParams.random(3, 4, 3))
    assert impl.runtime_info()["jax"] is not None  # versions come from the metadata, no import
    # and a process without jax at all still lists it, with the reason
    out = _run("""
        import sys
        sys.modules["jax"] = None
        import impls
        print("jax" in impls.names(), impls.get("jax").unavailable_reason("cpu"))
    """)
    assert out.strip() == f"True {want}"


def test_cuda_without_jax_cuda_plugin_is_a_reason(monkeypatch):
    _available()
    import impls.jax_impl as mod

    monkeypatch.setattr(mod, "_find_spec", lambda name: False)
    reason = Jax()._dependency_reason("cuda")
    assert reason is not None and "no CUDA plugin" in reason and "jax[cuda13]" in reason
    monkeypatch.setattr(mod, "_find_spec", lambda name: name == "jax_plugins.xla_cuda13")
    assert Jax()._dependency_reason("cuda") is None
    assert Jax()._dependency_reason("cpu") is None


# ---- threads ---------------------------------------------------------------------------
_THREADS_SCRIPT = """
    import os, json, torch, impls
    impl = impls.get("jax")
    {setup}
    x = torch.randn(2, 3, 6, 5); prepared = impl.prepare(impls.FlatParams.random(3, 4, 3))
    y, saved = impl.forward_train(x, prepared, padding=1)
    info = impl.runtime_info()
    out = {{"client": info["cpu_client"], "threads": info["threads"], "env": os.environ.get("PJRT_NPROC")}}
    {after}
    print(json.dumps(out))
"""


def test_set_num_threads_sizes_the_cpu_client_and_is_recorded():
    # 3 on purpose: neither this machine's core count nor torch's default
    out = json.loads(_run(_THREADS_SCRIPT.format(setup="impl.set_num_threads(3)", after="")).strip().splitlines()[-1])
    client = out["client"]
    assert (out["threads"], client["threads"], client["threads_from"]) == (3, 3, "set_num_threads")
    assert client["PJRT_NPROC"] == "3" and client["created_by"] == "flatconv"
    assert client["xla_eigen_threads_seen"] == 3  # the intra-op pool XLA made really has 3 threads
    assert out["env"] is None  # PJRT_NPROC put back as it was: child processes do not inherit it


def test_without_set_num_threads_the_count_comes_from_nproc_or_torch():
    out = json.loads(_run(_THREADS_SCRIPT.format(setup="", after=""), env={"NPROC": "3"}).strip().splitlines()[-1])
    assert out["client"]["threads"] == 3 and "NPROC from the environment" in out["client"]["threads_from"]
    assert out["client"]["xla_eigen_threads_seen"] == 3 and out["env"] is None
    out = json.loads(_run(_THREADS_SCRIPT.format(setup="torch.set_num_threads(1)", after="")).strip().splitlines()[-1])
    assert out["client"]["threads"] == 1 and out["client"]["threads_from"].startswith("torch.get_num_threads()")
    assert out["client"]["xla_eigen_threads_seen"] == 1


def test_another_count_after_the_client_exists_is_refused_never_run():
    after = """
    impl.set_num_threads(2)  # never raises: the harness sets every implementation in one loop
    out["reason"] = impl.unavailable_reason("cpu")
    errors = []
    for call in (lambda: impl.forward(x, prepared, padding=1), lambda: impl.prepare(prepared.params),
                 lambda: impl.backward(saved, torch.ones_like(y))):
        try:
            call()
            errors.append(None)
        except ValueError as e:
            errors.append(str(e))
    out["errors"] = errors
    impl.set_num_threads(1)  # the client's own count again: runs
    out["again"] = impl.unavailable_reason("cpu"), impl.forward(x, prepared, padding=1).shape == y.shape
    """
    out = json.loads(_run(_THREADS_SCRIPT.format(setup="impl.set_num_threads(1)", after=after)).strip().splitlines()[-1])
    assert out["client"]["threads"] == 1
    assert out["reason"].startswith("jax's CPU client runs 1 threads, fixed when it was created")
    assert "set_num_threads(2) cannot change it in this process" in out["reason"]
    assert len(out["errors"]) == 3 and all(e is not None and "runs 1 threads" in e for e in out["errors"]), out
    assert out["again"] == [None, True]


def test_set_num_threads_checks_its_count():
    impl = Jax()
    for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)):
        with pytest.raises(error, match="threads"):
            impl.set_num_threads(bad)
    impl.set_num_threads(5)
    assert impl.runtime_info()["threads_requested"] == 5


# ---- compile_stats ---------------------------------------------------------------------
@pytest.fixture
def xla_compiles():
    """JAX's own count of XLA compilations (its monitoring event), to check ours against."""
    _available()
    import jax.monitoring
    from jax._src.dispatch import BACKEND_COMPILE_EVENT

    seen = []

    def listener(event, duration, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield seen
    jax.monitoring.unregister_event_duration_listener(listener)


def test_one_compilation_per_key_and_none_on_a_repeated_call(xla_compiles):
    impl = _fresh()
    assert impl.compile_stats() == {"compilations": 0, "compile_seconds": 0.0}
    x, params = _layer(seed=10)
    prepared = impl.prepare(params)
    assert impl.compile_stats()["compilations"] == 0 and not xla_compiles  # prepare compiles nothing

    def count():
        return impl.compile_stats()["compilations"], len(xla_compiles)

    y = impl.forward(x, prepared, padding=1)
    first = impl.compile_stats()
    assert count() == (1, 1) and first["compile_seconds"] > 0
    for _ in range(3):
        assert torch.equal(impl.forward(x, prepared, padding=1), y)
    impl.forward(x, impl.prepare(impls.FlatParams.random(3, 4, 3, seed=99)), padding=1)  # new weights, same shapes
    assert count() == (1, 1) and impl.compile_stats() == first

    y2, saved = impl.forward_train(x, prepared, padding=1)
    assert count() == (2, 2) and torch.equal(y2, y)
    gy = torch.randn_like(y)
    impl.backward(saved, gy)
    assert count() == (3, 3)
    for _ in range(2):
        _, saved = impl.forward_train(x, prepared, padding=1)
        impl.backward(saved, gy)
    assert count() == (3, 3)

    impl.forward(x, prepared, padding=0)  # a new padding
    impl.forward(x[:1], prepared, padding=1)  # a new batch
    impl.forward(x.double(), impl.prepare(params.to(dtype=torch.float64)), padding=1)  # a new dtype
    assert count() == (6, 6)
    assert impl.compile_stats()["compile_seconds"] > first["compile_seconds"]
    assert impl.runtime_info()["compiled_functions"] == 6


def test_compile_stats_is_cumulative_per_instance():
    impl = _fresh()
    stats = impl.compile_stats()
    assert set(stats) == {"compilations", "compile_seconds"}
    assert isinstance(stats["compilations"], int) and isinstance(stats["compile_seconds"], float)
    assert impls.get("jax").compile_stats() is not stats


# ---- backward --------------------------------------------------------------------------
def _torch_stages(x, params, p):
    n, c, k = params.out_channels, params.in_channels, params.kernel_size
    t1 = F.conv2d(x, params.lateral.view(n, c, 1, 1), params.lateral_bias)
    t2 = F.conv2d(t1, params.vertical.view(n, 1, k, 1), params.vertical_bias, padding=(p, 0), groups=n)
    return t1, t2


def test_backward_is_repeatable_leaves_saved_as_it_was_and_matches_torch():
    impl = _available()
    x, params = _layer(c=3, n=5, k=4, b=2, h=7, w=6, seed=20)
    prepared = impl.prepare(params)
    y, saved = impl.forward_train(x, prepared, padding=2)
    before = {k: v.clone() for k, v in saved.tensors.items()}
    x_before = saved.x.clone()
    gy = torch.randn_like(y)
    g1 = impl.backward(saved, gy)
    g2 = impl.backward(saved, gy)
    for field in g1.FIELDS:
        assert torch.equal(getattr(g1, field), getattr(g2, field)), field
        assert getattr(g1, field).data_ptr() != getattr(g2, field).data_ptr(), "each backward returns fresh tensors"
    assert before.keys() == saved.tensors.keys() and all(torch.equal(saved.tensors[k], v) for k, v in before.items())
    assert torch.equal(saved.x, x_before)
    torch_impl = impls.get("torch")
    _, tsaved = torch_impl.forward_train(x, torch_impl.prepare(params), padding=2)
    ref = torch_impl.backward(tsaved, gy)
    for field in g1.FIELDS:
        torch.testing.assert_close(getattr(g1, field), getattr(ref, field), rtol=1e-5, atol=1e-5, msg=field)
    # saved.tensors copied into a plain dict (the JAX arrays gone): the same gradients, by DLPack
    plain = dataclasses.replace(saved, tensors={k: v.clone() for k, v in saved.tensors.items()})
    g3 = impl.backward(plain, gy)
    for field in g1.FIELDS:
        assert torch.equal(getattr(g3, field), getattr(g1, field)), field


def test_backward_consumes_the_kept_residuals_and_does_not_recompute_the_forward():
    impl = _available()
    p = 1
    x, params = _layer(c=3, n=4, k=3, seed=30)
    y, saved = impl.forward_train(x, impl.prepare(params), padding=p)
    t1, t2 = _torch_stages(x, params, p)
    # forward_train kept t1 and t2 (the stage outputs the weight gradients need; the taps
    # form keeps each zero-padded for its stage, the conv form as it is) ...
    def holds(t, ref):
        if t.dim() != 4 or t.shape[:2] != ref.shape[:2]:
            return False
        dh, dw = t.shape[2] - ref.shape[2], t.shape[3] - ref.shape[3]
        if dh not in (0, 2 * p) or dw not in (0, 2 * p):
            return False
        inner = t[:, :, dh // 2:t.shape[2] - dh // 2, dw // 2:t.shape[3] - dw // 2]
        return torch.allclose(inner, ref, rtol=1e-5, atol=1e-6)

    names = {}
    for name, t in saved.tensors.items():
        for what, ref in (("t1", t1), ("t2", t2)):
            if holds(t, ref):
                names[what] = name
    assert set(names) == {"t1", "t2"}, {k: tuple(v.shape) for k, v in saved.tensors.items()}
    # ... and x is not among them (XLA would have copied it): backward puts x back
    assert not any(t.shape == x.shape and torch.equal(t, x) for t in saved.tensors.values())
    gy = torch.randn_like(y)
    g = impl.backward(saved, gy)
    assert g.horizontal.abs().max() > 0
    # ... and backward reads them: with t2 zeroed in a copy, the horizontal weight gradient
    # (sum of t2 times the output gradient) is zero; a backward that recomputed the forward
    # from x would not notice.
    tensors = {k: v.clone() for k, v in saved.tensors.items()}
    tensors[names["t2"]].zero_()
    g0 = impl.backward(dataclasses.replace(saved, tensors=tensors), gy)
    assert torch.equal(g0.horizontal, torch.zeros_like(g0.horizontal))
    assert torch.equal(g0.input, g.input)  # input gradients need no activations


# ---- exchange --------------------------------------------------------------------------
@pytest.fixture
def conversions(monkeypatch):
    """Every array handed between torch and JAX by impls/jax_impl.py, with whether the two
    share memory, and whether the JAX result was ready when it became a torch tensor."""
    _available()
    import jax
    import jax.dlpack

    seen = {"in": [], "out": []}
    to_jax, to_torch = jax.dlpack.from_dlpack, torch.from_dlpack

    def from_torch(t, *args, **kwargs):
        a = to_jax(t, *args, **kwargs)
        seen["in"].append(a.unsafe_buffer_pointer() == t.data_ptr())
        return a

    def from_jax(a, *args, **kwargs):
        ready = a.is_ready()  # before the export, which itself waits for the buffer on the CPU
        t = to_torch(a, *args, **kwargs)
        seen["out"].append((t.data_ptr() == a.unsafe_buffer_pointer(), ready))
        return t

    monkeypatch.setattr(jax.dlpack, "from_dlpack", from_torch)
    monkeypatch.setattr(torch, "from_dlpack", from_jax)
    return seen


def test_dlpack_shares_memory_both_ways_and_results_are_ready(conversions):
    impl = _fresh()
    # large enough that a call returning before XLA is done would be caught (async dispatch)
    x, params = _layer(c=48, n=48, k=3, b=4, h=40, w=40, seed=40)
    prepared = impl.prepare(params)
    assert conversions["in"] == [True] * 6  # the parameters: no copy
    for arr, t in zip(prepared.extra["params"], params.tensors().values()):
        assert arr.unsafe_buffer_pointer() == t.data_ptr()
    y = impl.forward(x, prepared, padding=1)
    y, saved = impl.forward_train(x, prepared, padding=1)
    impl.backward(saved, torch.randn_like(y))
    assert conversions["in"] == [True] * 9  # x twice, grad_y
    assert len(conversions["out"]) == 1 + 1 + len(saved.tensors) + 7
    assert all(shared and ready for shared, ready in conversions["out"]), conversions["out"]
    jx, residuals = saved.tensors.arrays
    assert jx.unsafe_buffer_pointer() == x.data_ptr()
    for t, a in zip(saved.tensors.values(), residuals):
        assert t.data_ptr() == a.unsafe_buffer_pointer()
    assert impl.runtime_info()["input_copies"] == 0


def test_an_input_xla_cannot_use_in_place_is_copied_counted_and_still_right(conversions):
    impl = _fresh()
    x, params = _layer(seed=50, b=3)
    view = x[1:]  # contiguous, but its data starts 360 bytes into the storage: not aligned for XLA
    assert view.is_contiguous() and view.data_ptr() % 64
    prepared = impl.prepare(params)
    y = impl.forward(view, prepared, padding=1)
    assert conversions["in"][-1] is False and impl.runtime_info()["input_copies"] == 1
    torch_impl = impls.get("torch")
    torch.testing.assert_close(y, torch_impl.forward(view, torch_impl.prepare(params), padding=1))


# ---- dtypes, input -----------------------------------------------------------------------
def test_float64_is_float64_and_float32_stays_float32():
    impl = _available()
    torch_impl = impls.get("torch")
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        x, params = _layer(seed=60, dtype=dtype)
        y, saved = impl.forward_train(x, impl.prepare(params), padding=2)
        gy = torch.randn_like(y)
        g = impl.backward(saved, gy)
        assert y.dtype == dtype and all(t.dtype == dtype for t in g.tensors().values())
        _, tsaved = torch_impl.forward_train(x, torch_impl.prepare(params), padding=2)
        torch.testing.assert_close(y, torch_impl.forward(x, torch_impl.prepare(params), padding=2), rtol=tol, atol=tol)
        torch.testing.assert_close(g.lateral, torch_impl.backward(tsaved, gy).lateral, rtol=tol, atol=tol)


def test_bad_input_is_refused_with_the_reason():
    impl = _available()
    x, params = _layer(seed=70)
    prepared = impl.prepare(params)
    with pytest.raises(TypeError, match="float16"):
        impl.prepare(params.to(dtype=torch.float16))
    with pytest.raises(ValueError, match="padding"):
        impl.forward(x, prepared, padding=3)
    with pytest.raises(ValueError, match="channels"):
        impl.forward(x[:, :2], prepared)
    with pytest.raises(TypeError, match="dtype"):
        impl.forward(x.double(), prepared)
    torch_impl = impls.get("torch")
    _, tsaved = torch_impl.forward_train(x, torch_impl.prepare(params), padding=1)
    with pytest.raises(ValueError, match="made by implementation 'torch'"):
        impl.backward(tsaved, torch.zeros(2, 4, 6, 5))
    y, saved = impl.forward_train(x, prepared, padding=1)
    with pytest.raises(ValueError, match="grad_y"):
        impl.backward(saved, torch.zeros(2, 4, 6, 4))
    with pytest.raises(TypeError, match="grad_y"):
        impl.backward(saved, torch.zeros_like(y, dtype=torch.float64))


def test_inputs_that_require_grad_or_are_not_contiguous_work():
    impl = _available()
    x, params = _layer(seed=80, h=7, w=7)
    torch_impl = impls.get("torch")
    want = torch_impl.forward(x, torch_impl.prepare(params), padding=1)
    prepared = impl.prepare(params.replace(lateral=params.lateral.clone().requires_grad_()))
    torch.testing.assert_close(impl.forward(x.clone().requires_grad_(), prepared, padding=1), want)
    strided = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not strided.is_contiguous()
    torch.testing.assert_close(impl.forward(strided, prepared, padding=1), want)


def test_runtime_info_says_how_it_ran():
    impl = _available()
    x, params = _layer(seed=90)
    impl.forward(x, impl.prepare(params))
    info = impl.runtime_info()
    json.dumps(info)  # recorded as is
    import jax
    import jaxlib

    assert (info["jax"], info["jaxlib"]) == (jax.__version__, jaxlib.__version__)
    assert info["x64"] is True and info["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    assert info["cpu_client"]["created"] and info["threads"] == info["cpu_client"]["threads"] >= 1
    assert "cpu" in info["backends"] and info["XLA_FLAGS"] == os.environ.get("XLA_FLAGS", "")
    assert "DLPack" in info["exchange"] and "HIGHEST" in info["precision"]


# ---- CUDA (untested on the development machine) --------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)")
def test_cuda_matches_torch_without_copies_and_leaves_torch_its_memory(conversions):
    impl = _available("cuda")
    free_before, total = torch.cuda.mem_get_info()
    x, params = _layer(c=16, n=24, k=3, b=4, h=20, w=18, seed=100, device="cuda")
    # x written by a kernel on a side stream: JAX must see it finished
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x = x * 2.0
        prepared = impl.prepare(params)
        y, saved = impl.forward_train(x, prepared, padding=1)
        gy = torch.randn_like(y)
        g = impl.backward(saved, gy)
    torch.cuda.synchronize()
    assert all(conversions["in"]) and all(shared and ready for shared, ready in conversions["out"])
    assert y.device == x.device and y.dtype == torch.float32
    torch.backends.cudnn.allow_tf32 = False
    torch_impl = impls.get("torch")
    _, tsaved = torch_impl.forward_train(x, torch_impl.prepare(params), padding=1)
    ref = torch_impl.backward(tsaved, gy)
    torch.testing.assert_close(y, torch_impl.forward(x, torch_impl.prepare(params), padding=1), rtol=1e-5, atol=1e-5)
    for field in g.FIELDS:
        torch.testing.assert_close(getattr(g, field), getattr(ref, field), rtol=1e-4, atol=1e-4, msg=field)
    # no preallocation: JAX took far less than its default 75% of the GPU
    assert torch.cuda.mem_get_info()[0] > free_before - 0.25 * total
    assert "cuda" in impl.runtime_info()["backends"]


@pytest.mark.parametrize("form", ["conv", "taps"])
def test_both_forms_match_the_oracle_and_the_cpu_runs_the_taps(form):
    """The CPU runs the contraction and shifted multiply-adds (XLA's grouped convolution is
    slow there); the convolution form stays available and must be as exact."""
    _available()
    from _support import assert_close, layer_inputs

    assert impls.get("jax").form_on("cpu") == "taps" and impls.get("jax").form_on("cuda") == "conv"
    impl = Jax(form=form)
    x, params, gy = layer_inputs((2, 3, 4, 7, 6, 5), 2)
    assert_close(verify.check(impl, x, params, 2, gy), torch.float32, f"jax form={form}")
    assert ("shifted" if form == "taps" else "conv_general") in impl.runtime_info()["stages"]["cpu"]
    with pytest.raises(ValueError, match="form"):
        Jax(form="fft")
