"""Tests of `cupy` and `cupy_fused` (impls/cupy_kernels).

Three groups:
- CPU, always: importing without CuPy, `unavailable_reason` texts, validation before
  any CuPy use, the launch-plan arithmetic.
- CPU, where g++ is available: the real kernel source (.cu) run by the CPU emulator in
  impls/cupy_kernels/emu through the very launch plans the GPU path uses, against the
  float64 oracle (index arithmetic, halos, padding, tile ownership, reductions).
- GPU, skipped with the reason where CuPy or a device is missing: the oracle grid through
  `impls.verify.check`, rank-1 dense equivalence, non-contiguous input, bad inputs,
  determinism, no host synchronisation, per-kernel `stages`.
"""

from __future__ import annotations

import ctypes
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import impls
from impls import reference
from impls.cupy_kernels import _plan
from impls.verify import check, relative_error, tolerance

NAMES = ("cupy", "cupy_fused")
ROOT = pathlib.Path(__file__).resolve().parent.parent
EMU_DIR = ROOT / "impls" / "cupy_kernels" / "emu"


def _gpu_reason() -> str | None:
    return impls.get("cupy").unavailable_reason("cuda")


gpu = pytest.mark.skipif(_gpu_reason() is not None, reason=f"cupy on cuda: {_gpu_reason()}")


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


# ---- CPU: import, availability, validation ----------------------------------------------
def test_registered():
    assert set(NAMES) <= set(impls.names())
    for name in NAMES:
        impl = impls.get(name)
        assert impl.devices == ("cuda",)
        assert impl.supports_dtype("cuda", torch.float32) and impl.supports_dtype("cuda", torch.float64)
        assert impl.unavailable_reason("cpu") is not None


def test_import_without_cupy():
    """With CuPy unimportable, `import impls` still registers both, and each says why it
    cannot run: the child prints what it saw, checked here against the expected texts."""
    proc = _run_python("""
        import json, sys
        sys.modules["cupy"] = None  # any "import cupy" now raises ImportError
        import torch, impls
        from impls.cupy_kernels import cupy_missing_reason
        print(json.dumps({"registered": sorted(n for n in impls.names() if n.startswith("cupy")),
                          "missing": cupy_missing_reason(),
                          "reasons": {n: impls.get(n).unavailable_reason("cuda") for n in ("cupy", "cupy_fused")},
                          "versions": {n: impls.get(n).runtime_info()["cupy"] for n in ("cupy", "cupy_fused")}}))
    """)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = ("no CUDA device (torch.cuda.is_available() is False); CuPy is not installed"
                if not torch.cuda.is_available() else "CuPy is not installed")
    assert seen == {"registered": ["cupy", "cupy_fused"], "missing": "CuPy is not installed",
                    "reasons": {"cupy": expected, "cupy_fused": expected},
                    "versions": {"cupy": None, "cupy_fused": None}}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU reason")
def test_reason_without_gpu():
    for name in NAMES:
        assert impls.get(name).unavailable_reason("cuda").startswith("no CUDA device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks refusal on a machine without a GPU")
def test_validation_before_any_cupy_use_without_gpu():
    proc = _run_python("""
        import json, sys, torch, impls
        impl = impls.get("cupy_fused")
        prm = impls.FlatParams.random(4, 5, 3)
        for call in (lambda: impl.prepare(prm),
                     lambda: impl.prepare(prm.to(dtype=torch.float16))):
            try:
                call()
            except (ValueError, TypeError) as exc:
                print(json.dumps([type(exc).__name__, str(exc)]))
            else:
                print(json.dumps(None))
        print(json.dumps({"cupy imported": "cupy" in sys.modules}))
    """)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.strip().splitlines()[-3:]]
    refusal = ["ValueError", "params: cupy_fused runs on ('cuda',), got a tensor on device cpu"]
    assert lines == [refusal, refusal, {"cupy imported": False}], lines


def test_plan_tiles_and_names():
    for dtype in (torch.float32, torch.float64):
        for k in range(1, _plan.MAX_KERNEL_SIZE + 1):
            tiles = _plan.dw_tiles(k, dtype)
            assert 16 in tiles, (dtype, k)
            names = _plan.module_names("depthwise", dtype, k)
            assert len(names) == 5 * len(tiles) + 1
        assert _plan.dw_tile_for(32, 3, dtype) == 32 and _plan.dw_tile_for(16, 3, dtype) == 16
    assert _plan.module_names("gemm", torch.float32)[0] == "gemm_tiled<float, true, false>"


def test_expected_bytes_of_issue_layers():
    shape = impls.LayerShape(64, 256, 256, 32, 32, 3, 1)
    b = _plan.expected_bytes(shape)
    assert b["vertical+horizontal"] == 2 * 64 * 256 * 32 * 32 * 4


# ---- CPU: the .cu source through the emulator ----------------------------------------------
class EmuBackend:
    """Runs the plans' launches on CPU tensors through emu/emu_main.cpp. Fresh buffers are
    NaN-filled, so any output position a kernel fails to write shows up."""

    def __init__(self, so_path):
        self.lib = ctypes.CDLL(str(so_path))
        self.lib.emu_launch_by_name.restype = ctypes.c_int
        self.launched: list[str] = []

    def sm_count(self, device):
        return 4  # small, so the lateral weight gradient is split (gemm_sum_splits runs)

    def empty(self, shape, like):
        return torch.full(shape, float("nan"), dtype=like.dtype, device=like.device)

    def launch(self, family, dtype, k, name, grid, block, args):
        keep, ptrs = [], (ctypes.c_void_p * len(args))()
        for i, a in enumerate(args):
            if a[0] == "p":
                t, off = a[1], a[2]
                v = ctypes.c_void_p(0 if t is None else t.data_ptr() + off * t.element_size())
            elif a[0] == "i":
                v = ctypes.c_int32(a[1])
            else:
                v = ctypes.c_int64(a[1])
            keep.append(v)
            ptrs[i] = ctypes.cast(ctypes.pointer(v), ctypes.c_void_p)
        assert self.lib.emu_launch_by_name(name.encode(), *grid, *block, ptrs) == 0, f"{name} not in the emulator"
        self.launched.append(name)


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not on PATH: cannot build the CPU emulator of the CUDA kernels")
    so = tmp_path_factory.mktemp("cuda_emu") / "emu.so"
    cmd = [gxx, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-Wno-unknown-pragmas", "-o", str(so),
           str(EMU_DIR / "emu_main.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "c++20" in proc.stderr:
        pytest.skip(f"g++ lacks C++20 (std::barrier): {proc.stderr[:200]}")
    assert proc.returncode == 0, proc.stderr
    return EmuBackend(so)


def _emu_errors(be, b, c, n, h, w, k, p, dtype, fused, x_transform=None):
    prm = impls.FlatParams.random(c, n, k, dtype=dtype, seed=1)
    x = torch.randn(b, c, h, w, dtype=dtype, generator=torch.Generator().manual_seed(2))
    ref = reference.forward(x, prm, p)
    y, kept = _plan.forward(be, x, prm, p, fused=fused, keep=True)
    y_inf, _ = _plan.forward(be, x, prm, p, fused=fused, keep=False)
    errors = {"output": relative_error(y, ref), "inference": relative_error(y_inf, ref)}
    gy = torch.randn(ref.shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
    before = {name: t.clone() for name, t in kept.items()}
    grads = _plan.backward(be, x, prm, p, kept["t1"], kept["t2"], gy)
    for name, t in kept.items():
        assert torch.equal(t, before[name]), f"backward modified saved {name}"
    ref_g = reference.backward(x, prm, p, gy).tensors()
    for field, value in zip(impls.FlatGrads.FIELDS, grads):
        errors[field] = relative_error(value, ref_g[field])
    return errors


# (B, C, N, H, W, k, p): batch 1, one channel, C != N, k = 1, even k, k = 7, non-square,
# several tiles per plane with partial last tiles (37 x 40 with 32-wide tiles), every
# padding from valid to full, widths not divisible by 4 (scalar path) and divisible (vector).
EMU_CASES = [
    (1, 1, 1, 5, 6, 1, 0),
    (2, 3, 5, 7, 9, 3, 1),
    (1, 2, 3, 6, 8, 2, 0),
    (1, 2, 3, 6, 8, 2, 1),
    (1, 3, 2, 9, 12, 7, 0),
    (1, 3, 2, 9, 12, 7, 3),
    (1, 3, 2, 9, 12, 7, 6),
    (1, 2, 2, 37, 40, 3, 0),
    (1, 2, 2, 37, 40, 3, 2),
    (1, 2, 2, 33, 35, 5, 2),
    (1, 2, 2, 33, 35, 5, 4),
    (2, 4, 3, 16, 20, 4, 3),
]


@pytest.mark.parametrize("fused", [False, True], ids=["cupy", "cupy_fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", EMU_CASES, ids=[f"B{c[0]}C{c[1]}N{c[2]}H{c[3]}W{c[4]}k{c[5]}p{c[6]}" for c in EMU_CASES])
def test_emulated_kernels_match_oracle(emu, case, dtype, fused):
    errors = _emu_errors(emu, *case, dtype, fused)
    tol = tolerance(dtype)
    assert max(errors.values()) <= tol, errors


def test_emulated_gemm_tiles(emu):
    # More than one 128-row tile of the float GEMM (and 64 of the double one) in M and N,
    # a K (= C) that is not a multiple of 8, and a split lateral weight gradient.
    for dtype in (torch.float32, torch.float64):
        errors = _emu_errors(emu, 3, 131, 129, 3, 5, 1, 0, dtype, True)
        assert max(errors.values()) <= tolerance(dtype), errors
    assert "gemm_sum_splits<double>" in emu.launched


# ---- GPU -------------------------------------------------------------------------------
GPU_CASES = EMU_CASES + [
    (2, 3, 7, 5, 5, 5, 4),
    (64, 16, 16, 32, 32, 3, 1),
    (3, 130, 129, 17, 19, 3, 1),
]


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", GPU_CASES, ids=[f"B{c[0]}C{c[1]}N{c[2]}H{c[3]}W{c[4]}k{c[5]}p{c[6]}" for c in GPU_CASES])
def test_oracle_grid(name, dtype, case):
    b, c, n, h, w, k, p = case
    prm = impls.FlatParams.random(c, n, k, device="cuda", dtype=dtype, seed=4)
    x = torch.randn(b, c, h, w, device="cuda", dtype=dtype)
    oh, ow = h + 2 * p - k + 1, w + 2 * p - k + 1
    gy = torch.randn(b, n, oh, ow, device="cuda", dtype=dtype)
    errors = check(impls.get(name), x, prm, p, gy)
    assert max(errors.values()) <= tolerance(dtype), errors


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_input(name):
    impl = impls.get(name)
    prm = impls.FlatParams.random(6, 4, 3, device="cuda", seed=5)
    base = torch.randn(2, 13, 11, 6, device="cuda")
    x = base.permute(0, 3, 1, 2)[:, :, 1:, :]  # (2, 6, 12, 11), not contiguous
    assert not x.is_contiguous()
    gy = torch.randn(2, 4, 12, 11, device="cuda")
    errors = check(impl, x, prm, 1, gy)
    assert max(errors.values()) <= tolerance(torch.float32), errors
    # A contiguous view at an odd offset (not 16-byte aligned): the scalar load path.
    flat = torch.randn(1 + 2 * 6 * 12 * 12, device="cuda")
    x2 = flat[1:].view(2, 6, 12, 12)
    errors = check(impl, x2, prm, 1, torch.randn(2, 4, 12, 12, device="cuda"))
    assert max(errors.values()) <= tolerance(torch.float32), errors


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_rank1_dense_equivalence(name, padding):
    import torch.nn.functional as F

    impl = impls.get(name)
    prm = impls.FlatParams.random(8, 6, 3, device="cuda", dtype=torch.float64, seed=6).without_inner_biases()
    x = torch.randn(2, 8, 10, 9, device="cuda", dtype=torch.float64)
    y = impl.forward(x, impl.prepare(prm), padding=padding)
    dense = F.conv2d(x, prm.dense_weight(), prm.dense_bias(), padding=padding)
    assert relative_error(y, dense) < 1e-10


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_before_launch(name, monkeypatch):
    from impls.cupy_kernels import _cupy_backend

    impl = impls.get(name)
    prm = impls.FlatParams.random(4, 5, 3, device="cuda")
    prepared = impl.prepare(prm)
    good = torch.randn(2, 4, 8, 8, device="cuda")

    def no_launch(*args, **kwargs):
        raise AssertionError("a kernel was launched on a bad input")

    monkeypatch.setattr(_cupy_backend.get(), "launch", no_launch)
    bad = [
        (lambda: impl.forward(good[0], prepared, 1), ValueError, "x"),
        (lambda: impl.forward(torch.randn(2, 3, 8, 8, device="cuda"), prepared, 1), ValueError, "channels"),
        (lambda: impl.forward(good, prepared, 3), ValueError, "padding"),
        (lambda: impl.forward(good, prepared, -1), ValueError, "padding"),
        (lambda: impl.forward(torch.randn(2, 4, 1, 1, device="cuda"), prepared, 0), ValueError, "kernel_size"),
        (lambda: impl.forward(good.cpu(), prepared, 1), ValueError, "device"),
        (lambda: impl.forward(good.double(), prepared, 1), TypeError, "dtype"),
        (lambda: impl.forward(good.half(), prepared, 1), TypeError, "dtype"),
        (lambda: impl.forward(good, prepared, 1.5), TypeError, "padding"),
    ]
    for call, exc_type, word in bad:
        with pytest.raises(exc_type, match=word):
            call()
    with pytest.raises(ValueError, match="kernel_size"):
        impl.prepare(impls.FlatParams.random(2, 2, _plan.MAX_KERNEL_SIZE + 1, device="cuda"))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_no_host_sync(name):
    impl = impls.get(name)
    prm = impls.FlatParams.random(32, 48, 3, device="cuda", seed=7)
    prepared = impl.prepare(prm)
    x = torch.randn(8, 32, 20, 20, device="cuda")
    gy = torch.randn(8, 48, 20, 20, device="cuda")
    y, saved = impl.forward_train(x, prepared, padding=1)  # warm-up outside sync-debug mode
    impl.backward(saved, gy)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y, saved = impl.forward_train(x, prepared, padding=1)
        g1 = impl.backward(saved, gy).tensors()
        g2 = impl.backward(saved, gy).tensors()
        impl.forward(x, prepared, padding=1)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for field in g1:
        assert torch.equal(g1[field], g2[field]), f"{field} differs between two backward runs"


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_stages_launch_each_kernel(name):
    impl = impls.get(name)
    prm = impls.FlatParams.random(16, 24, 3, device="cuda", seed=8)
    prepared = impl.prepare(prm)
    x = torch.randn(4, 16, 12, 12, device="cuda")
    stages = impl.stages(x, prepared, 1)
    expected = {"lateral", "vertical+horizontal"} if name == "cupy_fused" else {"lateral", "vertical", "horizontal"}
    assert set(stages) == expected
    for fn in stages.values():
        fn()
    torch.cuda.synchronize()
    info = impl.runtime_info()
    assert info["cupy"] and info["compiled"]


@gpu
@pytest.mark.gpu
def test_cupy_allocations_go_through_torch():
    import cupy

    impls.get("cupy").prepare(impls.FlatParams.random(2, 2, 3, device="cuda"))
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    a = cupy.empty(1 << 20, dtype=cupy.float32)
    assert torch.cuda.memory_allocated() - before >= 4 << 20
    del a


@gpu
@pytest.mark.gpu
def test_module_autograd():
    layer = impls.FlattenedConv2d(6, 5, 3, padding=1, impl="cupy_fused", device="cuda", dtype=torch.float64, seed=3)
    x = torch.randn(2, 6, 7, 8, device="cuda", dtype=torch.float64, requires_grad=True)
    layer(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ---- CPU: NVRTC (the GPU path's compiler) accepts the sources -------------------------------
@pytest.mark.parametrize("family,k", [("gemm", None), ("depthwise", 1), ("depthwise", 4), ("depthwise", 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_nvrtc_compiles_every_name_expression(family, k, dtype):
    """Compiles with NVRTC to PTX (no GPU needed), with the name expressions the plans
    launch; skipped where CuPy or libnvrtc is missing."""
    try:
        from cupy.cuda import compiler

        from impls.cupy_kernels import _cupy_backend

        program = compiler._NVRTCProgram  # CuPy internals: skip, don't fail, if they move
    except Exception as exc:
        pytest.skip(f"CuPy's NVRTC wrapper is unavailable: {exc}")
    names = _plan.module_names(family, dtype, k)
    src = _cupy_backend.SOURCES[family].read_text()
    try:
        prog = program(src, f"{family}.cu", name_expressions=names)
        ptx, mapping = prog.compile(_cupy_backend.NVRTC_OPTIONS + ("-arch=compute_90",))
    except Exception as exc:
        if "libnvrtc" in str(exc) or "nvrtc" in type(exc).__name__.lower() and "Compile" not in type(exc).__name__:
            pytest.skip(f"NVRTC is not loadable here: {str(exc)[:200]}")
        raise
    assert set(mapping) == set(names)
    assert ptx
