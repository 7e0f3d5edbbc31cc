"""Tests of `triton_fused` (impls/triton_fused).

- Always: the contract without a GPU (registered, CUDA only, one-line reasons, `import
  impls` never imports triton, test_correctness's GPU cases skip it cleanly).
- Where triton is installed (CPU is enough): the real kernels and launch code run by
  Triton's interpreter on CPU tensors, through an unregistered twin
  `TritonFused(interpret=True)` (devices ("cpu",)), against the float64 oracle: forward
  and all gradients on odd shapes, every padding, k = 1..8, every tile feature (several
  strips and column tiles, planes masked off, every read-ahead depth), float32 and
  float64; determinism; stages. The twin's kernels are a private copy of the kernel
  module decorated under TRITON_INTERPRET=1 (impls/triton_fused/_launch.kernels), so it
  does not matter which test, in this process, imported the compiled module first.
- Where triton's NVIDIA backend is present (no GPU needed): both kernels compiled ahead
  of time for sm_90 (triton.compile with a GPUTarget), every k and padding class, and the
  default tiles of the benchmark layers checked for register spills.
- GPU (skipped here): the registered implementation on CUDA against the oracle, and
  compiled against interpreted kernels.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import impls
from impls import reference, verify
from impls.triton_fused import TritonFused, triton_missing_reason

from _support import assert_close, impl_device_params, layer_inputs

ROOT = pathlib.Path(__file__).resolve().parent.parent
MISSING = triton_missing_reason()
needs_triton = pytest.mark.skipif(MISSING is not None, reason=f"triton_fused: {MISSING}")
GPU_REASON = impls.get("triton_fused").unavailable_reason("cuda")
needs_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"triton_fused on cuda: {GPU_REASON}")


def _interpreter_reason() -> str | None:
    """Triton before 3.7 interprets a loop over a runtime int by int() of a one-element
    array, which numpy 2.4 and later refuse ("only 0-dimensional arrays can be converted to
    Python scalars"): the GPU machine's image (triton 3.6, numpy 2.5) cannot interpret the
    kernels; the compiled ones are not affected."""
    if MISSING is not None:
        return None
    import numpy
    import triton

    def version(text):
        return tuple(int(p) for p in re.findall(r"\d+", text)[:2])

    if version(triton.__version__) < (3, 7) and version(numpy.__version__) >= (2, 4):
        return (f"triton {triton.__version__}'s interpreter cannot run these kernels under numpy "
                f"{numpy.__version__} (int() of a one-element array in range(); fixed in triton 3.7+)")
    return None


INTERPRETER_REASON = _interpreter_reason()
needs_interpreter = pytest.mark.skipif(INTERPRETER_REASON is not None, reason=str(INTERPRETER_REASON))


def _check_train(impl, x, params, padding, gy):
    """verify.check without the separate inference call (forward and forward_train run
    the same kernel; test_interpreted_inference_path checks forward itself): relative
    errors of the output and every gradient against the float64 oracle."""
    prepared = impl.prepare(params)
    y, saved = impl.forward_train(x, prepared, padding=padding)
    errors = {"train_output": verify.relative_error(y, reference.forward(x, params, padding))}
    grads = impl.backward(saved, gy).tensors()
    ref = reference.backward(x, params, padding, gy).tensors()
    errors.update({field: verify.relative_error(grads[field], ref[field]) for field in ref})
    return errors


def _run_python(code: str, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


# ---- the contract, no GPU and no triton needed ----------------------------------------
def test_registered_for_cuda_only():
    impl = impls.get("triton_fused")
    assert isinstance(impl, TritonFused) and not impl.interpret
    assert impl.devices == ("cuda",) and impl.role == "peer"
    assert impl.supports_dtype("cuda", torch.float32) and impl.supports_dtype("cuda", torch.float64)
    assert not impl.supports_dtype("cuda", torch.float16)
    assert impl.unavailable_reason("cpu") == "triton_fused runs on cuda only, not cpu"
    with pytest.raises(ValueError, match="triton_fused"):
        impl.prepare(impls.FlatParams.random(2, 3, 3))  # CPU parameters are refused


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU reason")
def test_no_gpu_reason_is_one_line():
    reason = impls.get("triton_fused").unavailable_reason("cuda")
    assert reason and "\n" not in reason
    assert reason.startswith("no CUDA device (torch.cuda.is_available() is False)")
    if MISSING:
        assert reason.endswith("; " + MISSING)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU skip")
def test_correctness_gpu_parametrisation_skips_it():
    params = {p.id: p for p in impl_device_params()}
    assert "triton_fused-cuda" in params and "triton_fused-cpu" not in params
    marks = {m.name: m for m in params["triton_fused-cuda"].marks}
    assert "gpu" in marks and "skip" in marks
    assert "no CUDA device" in marks["skip"].kwargs["reason"]


def test_import_impls_does_not_import_triton_and_works_without_it():
    proc = _run_python("""
        import sys
        import impls
        assert "triton" not in sys.modules, "import impls imported triton"
        impl = impls.get("triton_fused")
        impl.unavailable_reason("cuda"); impl.runtime_info()
        assert "triton" not in sys.modules, "unavailable_reason or runtime_info imported triton"
        sys.modules["triton"] = None  # now triton cannot be imported: as if not installed
        from impls.triton_fused import triton_missing_reason
        import json
        print(json.dumps({"missing": triton_missing_reason(), "reason": impl.unavailable_reason("cuda"),
                          "triton": impl.runtime_info()["triton"]}))
    """)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    missing = "triton is not installed (pip install flatconv[triton])"
    reason = f"no CUDA device (torch.cuda.is_available() is False); {missing}" if not torch.cuda.is_available() else missing
    assert seen == {"missing": missing, "reason": reason, "triton": None}, seen


def test_runtime_info_describes_the_implementation():
    info = impls.get("triton_fused").runtime_info()
    assert info["lateral"].startswith("torch.matmul")
    assert "deterministic" in info["weight_grad_reduction"]
    assert info["kernels"] == ["vh_forward_kernel", "vh_backward_kernel"]


def test_default_tiles_of_the_benchmark_layers():
    from impls.triton_fused import _launch

    for c, n, s, k in ((128, 128, 32, 3), (256, 256, 16, 3), (256, 256, 32, 3), (128, 128, 32, 5)):
        nq = 64 * n
        for kind in ("forward", "backward"):
            tile = _launch.default_tile(nq, s, s, kind=kind, sms=132)
            assert tile.bw == s and tile.nb * tile.bw == 128 and tile.num_warps == 1, tile
            programs, tiles, col_tiles = _launch._grid(nq, s, s, tile)
            assert col_tiles == 1 and programs == -(-nq // tile.nb) * tiles
        cands = _launch.tile_candidates(nq, s, s, sms=132)
        assert cands[0] == _launch.default_tile(nq, s, s, sms=132) and len(set(cands)) == len(cands) > 1
    with pytest.raises(ValueError, match="tile"):
        _launch._check_tile(_launch.Tile(3, 32, 8, 1))


# ---- the kernels through Triton's interpreter, on the CPU ----------------------------
# (batch, in_channels, out_channels, height, width, kernel_size): batch 1, one channel,
# C != N both ways, k = 1, even k (2, 4), k = 5 and 7, non-square, an input exactly k
# tall; every padding 0..k-1 of each.
GRID = [
    (1, 1, 1, 5, 5, 3),
    (2, 3, 5, 7, 6, 3),
    (1, 4, 2, 6, 9, 1),
    (2, 2, 3, 8, 5, 2),
    (1, 3, 4, 9, 7, 4),
    (1, 1, 2, 8, 9, 7),
    (1, 2, 2, 3, 12, 3),
    (2, 3, 2, 7, 7, 5),
]
# every padding, except for k = 7: 0, 3 (same) and 6 (full)
CASES = [(shape, p) for shape in GRID for p in range(shape[5]) if shape[5] != 7 or p in (0, 3, 6)]


@pytest.fixture(scope="module")
def twin():
    return TritonFused(interpret=True)


@needs_triton
def test_compiled_and_interpreted_modules_coexist():
    """Importing the compiled kernel module first (as a GPU process would) leaves the
    interpreted twin working, and the twin does not turn the compiled module into an
    interpreted one."""
    from impls.triton_fused import _launch

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 is set for the whole process")
    compiled, interpreted = _launch.kernels(False), _launch.kernels(True)
    assert compiled is not interpreted
    assert not _launch.is_interpreted(compiled) and _launch.is_interpreted(interpreted)
    assert _launch.kernels(False) is compiled and _launch.kernels(True) is interpreted
    assert "TRITON_INTERPRET" not in os.environ


@needs_triton
@pytest.mark.parametrize("shape,padding", CASES, ids=[f"{s}-p{p}" for s, p in CASES])
@needs_interpreter
def test_interpreted_matches_oracle(twin, shape, padding):
    x, params, gy = layer_inputs(shape, padding, seed=sum(shape) + padding)
    assert_close(_check_train(twin, x, params, padding, gy), torch.float32, f"{shape} padding {padding}")


@needs_triton
@pytest.mark.parametrize("shape,padding", [((2, 3, 5, 7, 6, 3), 1), ((1, 2, 3, 6, 9, 4), 3)])
@needs_interpreter
def test_interpreted_inference_path(twin, shape, padding):
    x, params, gy = layer_inputs(shape, padding, seed=1)
    assert_close(verify.check(twin, x, params, padding, gy), torch.float32, f"{shape} padding {padding}")


# Tiles that exercise every feature of the kernels' indexing: several row strips (halo
# rows re-read, ownership of the weight-gradient terms), several column tiles (shifted
# reads across tile edges), planes masked off in the last plane block, 1-4 rows read ahead.
TILE_CASES = [
    # (shape, padding, forward tile, backward tile), tiles as (nb, bw, rs, num_warps, ahead)
    ((2, 1, 3, 5, 6, 3), 1, (4, 4, 3, 1, 1), (4, 4, 3, 1, 1)),
    ((1, 2, 3, 5, 5, 4), 3, (2, 4, 4, 1, 2), (2, 4, 5, 1, 1)),
    ((3, 1, 1, 6, 7, 5), 0, (2, 2, 1, 1, 3), (2, 4, 3, 2, 1)),
    ((1, 1, 3, 3, 4, 8), 7, (2, 8, 5, 1, 4), (4, 8, 5, 1, 1)),
    ((1, 1, 3, 4, 5, 1), 0, (2, 4, 2, 1, 4), (2, 4, 3, 1, 1)),
]


@needs_triton
@pytest.mark.parametrize("shape,padding,ft,bt", TILE_CASES, ids=[f"{c[0]}-p{c[1]}" for c in TILE_CASES])
@needs_interpreter
def test_interpreted_tiles_match_oracle(shape, padding, ft, bt):
    from impls.triton_fused._launch import Tile

    impl = TritonFused(interpret=True, tiles={"forward": Tile(*ft), "backward": Tile(*bt)})
    x, params, gy = layer_inputs(shape, padding, seed=7)
    assert_close(_check_train(impl, x, params, padding, gy), torch.float32, f"{shape} padding {padding} tiles")


@needs_triton
@pytest.mark.parametrize("shape,padding", [((2, 3, 4, 7, 6, 3), 1), ((1, 2, 3, 6, 9, 6), 4)])
@needs_interpreter
def test_interpreted_float64(twin, shape, padding):
    x, params, gy = layer_inputs(shape, padding, torch.float64, seed=3)
    assert_close(_check_train(twin, x, params, padding, gy), torch.float64, f"{shape} padding {padding}")


@needs_triton
@needs_interpreter
def test_interpreted_without_inner_biases_is_the_dense_rank1_conv(twin):
    x, params, gy = layer_inputs((2, 3, 4, 7, 6, 3), 2, torch.float64, seed=11)
    params = params.without_inner_biases()
    x_ref = x.clone().requires_grad_()
    y_ref = torch.nn.functional.conv2d(x_ref, params.dense_weight(), params.horizontal_bias, padding=2)
    y_ref.backward(gy)
    y, saved = twin.forward_train(x, twin.prepare(params), padding=2)
    torch.testing.assert_close(y, y_ref.detach())
    torch.testing.assert_close(twin.backward(saved, gy).input, x_ref.grad)


@needs_triton
@needs_interpreter
def test_interpreted_backward_is_deterministic_and_leaves_saved_alone(twin):
    x, params, gy = layer_inputs((2, 3, 4, 6, 6, 3), 1, seed=5)
    _, saved = twin.forward_train(x, twin.prepare(params), padding=1)
    kept = {k: v.clone() for k, v in saved.tensors.items()}
    assert set(kept) == {"t1"}  # t2 is recomputed by the backward kernel, never saved
    first = twin.backward(saved, gy).tensors()
    second = twin.backward(saved, gy).tensors()
    for field in first:
        assert torch.equal(first[field], second[field]), field
    for k, v in kept.items():
        assert torch.equal(saved.tensors[k], v), k


@needs_triton
@needs_interpreter
def test_interpreted_stages(twin):
    x, params, _ = layer_inputs((2, 3, 4, 7, 6, 3), 1, seed=9)
    prepared = twin.prepare(params)
    stages = twin.stages(x, prepared, 1)
    assert set(stages) == {"lateral", "vertical+horizontal"}
    t1 = stages["lateral"]()
    ref_t1 = torch.einsum("nc,bchw->bnhw", params.lateral, x)  # the GEMM, without the bias
    torch.testing.assert_close(t1, ref_t1)
    y = stages["vertical+horizontal"]()
    torch.testing.assert_close(y, twin.forward(x, prepared, 1))
    assert_close({"stage": verify.relative_error(y, reference.forward(x, params, 1))}, torch.float32, "stage")


@needs_triton
def test_kernel_size_above_the_window_is_refused(twin):
    with pytest.raises(ValueError, match="kernel_size <= 8"):
        twin.prepare(impls.FlatParams.random(2, 2, 9))


@needs_triton
@needs_interpreter
def test_interpreted_with_triton_interpret_set_for_the_whole_process():
    """The usual way to run Triton kernels on the CPU (TRITON_INTERPRET=1 before triton
    is imported) works too: then both kernel modules are interpreted."""
    proc = _run_python("""
        import json, torch, impls
        from impls.triton_fused import TritonFused, _launch
        assert _launch.is_interpreted(_launch.kernels(False))
        impl = TritonFused(interpret=True)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(2, 3, 6, 7, generator=gen)
        params = impls.FlatParams.random(3, 4, 3, seed=1)
        gy = torch.randn(2, 4, 6, 7, generator=gen)
        y, saved = impl.forward_train(x, impl.prepare(params), padding=1)
        grads = impl.backward(saved, gy).tensors()
        print(json.dumps({"forward": impl.forward(x, impl.prepare(params), padding=1).tolist(), "train": y.tolist(),
                          **{k: v.tolist() for k, v in grads.items()}}))
    """, {"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = {k: torch.tensor(v, dtype=torch.float64) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    # the same seeded inputs here, and the float64 oracle on them
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 7, generator=gen)
    params = impls.FlatParams.random(3, 4, 3, seed=1)
    gy = torch.randn(2, 4, 6, 7, generator=gen)
    y_ref = reference.forward(x, params, 1)
    expected = {"forward": y_ref, "train": y_ref, **reference.backward(x, params, 1, gy).tensors()}
    assert set(seen) == set(expected)
    assert_close({k: verify.relative_error(seen[k], v) for k, v in expected.items()}, torch.float32, "TRITON_INTERPRET=1")


# ---- ahead-of-time compile for sm_90 (no GPU needed) ---------------------------------
def _nvidia_backend_reason():
    if MISSING:
        return MISSING
    try:
        import triton.backends.nvidia.compiler  # noqa: F401
    except Exception as exc:  # pragma: no cover - triton without its NVIDIA backend
        return f"triton's NVIDIA backend is unavailable ({exc})"
    return None


needs_backend = pytest.mark.skipif(_nvidia_backend_reason() is not None,
                                   reason=f"compile check: {_nvidia_backend_reason()}")


def _resources(compiled) -> dict[str, int] | None:
    """Registers and stack bytes (spills) of a compiled kernel, from cuobjdump, or None
    when triton's cuobjdump is not there."""
    import triton

    tool = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        found = shutil.which("cuobjdump")
        if not found:
            return None
        tool = pathlib.Path(found)
    cubin = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"triton_fused_{os.getpid()}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    try:
        out = subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True, timeout=60).stdout
    finally:
        cubin.unlink()
    m = re.search(r"REG:(\d+) STACK:(\d+)", out)
    return {"regs": int(m.group(1)), "stack": int(m.group(2))} if m else None


# The kernels' compile-time structure at its extremes: k = 1 and 8 (no window, all 8
# slots), padding 0 and k - 1, with and without the lateral bias, read-ahead 1-4,
# float64, a wide tile and several warps. (The interpreter tests trace every branch.)
COMPILE_CASES = [
    # (k, padding, has_lb, (nb, bw, rs, warps, ahead), dtype)
    (1, 0, False, (4, 32, 16, 1, 1), torch.float32),
    (3, 1, True, (4, 32, 32, 1, 3), torch.float32),
    (4, 3, True, (8, 16, 16, 2, 4), torch.float32),
    (8, 7, True, (1, 128, 16, 1, 2), torch.float32),
    (5, 2, True, (4, 32, 16, 1, 2), torch.float64),
]


@needs_backend
@pytest.mark.parametrize("kernel", ["vh_forward_kernel", "vh_backward_kernel"])
@pytest.mark.parametrize("k,padding,has_lb,tile,dtype", COMPILE_CASES, ids=[f"k{c[0]}p{c[1]}-{c[4]}" for c in COMPILE_CASES])
def test_compiles_for_sm90(kernel, k, padding, has_lb, tile, dtype):
    from impls.triton_fused._launch import Tile, compile_kernel

    compiled = compile_kernel(kernel, dtype, k, padding, Tile(*tile), has_lb=has_lb)
    ptx = compiled.asm["ptx"]
    assert f".entry {kernel}" in ptx and compiled.asm["cubin"]
    if dtype == torch.float32 and tile[0] * tile[1] >= 128 * tile[3]:
        # 4 values per thread: the unshifted row reads and the stores are 16-byte vectors
        assert "ld.global.v4.b32" in ptx and "st.global.v4.b32" in ptx


@needs_backend
def test_compiles_for_odd_sizes():
    """Sizes that are not multiples of 16 (no divisibility specialisation): scalar reads."""
    from impls.triton_fused._launch import Tile, compile_kernel

    for kernel in ("vh_forward_kernel", "vh_backward_kernel"):
        ptx = compile_kernel(kernel, torch.float32, 3, 1, Tile(4, 32, 16, 1, 2), divisible=False).asm["ptx"]
        assert f".entry {kernel}" in ptx and "ld.global.v4" not in ptx


@needs_backend
@pytest.mark.parametrize("kernel,kind", [("vh_forward_kernel", "forward"), ("vh_backward_kernel", "backward")])
def test_default_tiles_of_the_benchmark_layers_do_not_spill(kernel, kind):
    from impls.triton_fused._launch import compile_kernel, default_tile

    for k in (3,):
        tile = default_tile(64 * 128, 32, 32, kind=kind, sms=132)
        res = _resources(compile_kernel(kernel, torch.float32, k, k // 2, tile))
        if res is None:
            pytest.skip("cuobjdump not found")
        assert res["stack"] == 0, f"{kernel} k={k} {tile}: spills ({res})"


# ---- on a GPU ------------------------------------------------------------------------
@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_gpu_matches_oracle(dtype):
    impl = impls.get("triton_fused")
    for seed, (shape, p) in enumerate(CASES + [((4, 16, 24, 33, 70, 3), 1), ((2, 8, 8, 140, 9, 5), 2), ((1, 2, 3, 20, 300, 7), 3)]):
        x, params, gy = layer_inputs(shape, p, dtype, "cuda", seed)
        assert_close(verify.check(impl, x, params, p, gy), dtype, f"{shape} padding {p}")


@needs_gpu
@pytest.mark.gpu
@needs_interpreter
def test_gpu_benchmark_layer_matches_oracle_and_interpreter_tiles():
    """A benchmark-sized layer (default tile, one strip per plane) and a small one run
    compiled and interpreted with the same tiles give the same results."""
    from impls.triton_fused._launch import Tile

    impl = impls.get("triton_fused")
    x, params, gy = layer_inputs((8, 64, 64, 32, 32, 3), 1, torch.float32, "cuda", seed=1)
    assert_close(verify.check(impl, x, params, 1, gy), torch.float32, "benchmark-sized layer")
    tiles = {"forward": Tile(2, 4, 3, 1, 2), "backward": Tile(2, 4, 3, 1, 1)}
    gpu = TritonFused(tiles=tiles)
    cpu = TritonFused(interpret=True, tiles=tiles)
    x, params, gy = layer_inputs((1, 3, 3, 10, 11, 3), 1, torch.float32, "cpu", seed=2)
    y_cpu, s_cpu = cpu.forward_train(x, cpu.prepare(params), 1)
    y_gpu, s_gpu = gpu.forward_train(x.cuda(), gpu.prepare(params.to("cuda")), 1)
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-5, atol=1e-6)
    g_cpu, g_gpu = cpu.backward(s_cpu, gy).tensors(), gpu.backward(s_gpu, gy.cuda()).tensors()
    for field in g_cpu:
        torch.testing.assert_close(g_gpu[field].cpu(), g_cpu[field], rtol=1e-5, atol=1e-6, msg=field)


@needs_gpu
@pytest.mark.gpu
def test_gpu_no_host_sync_and_stages():
    impl = impls.get("triton_fused")
    x, params, gy = layer_inputs((2, 8, 8, 16, 16, 3), 1, torch.float32, "cuda", seed=4)
    prepared = impl.prepare(params)
    impl.backward(impl.forward_train(x, prepared, 1)[1], gy)  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, saved = impl.forward_train(x, prepared, 1)
        impl.backward(saved, gy)
        impl.forward(x, prepared, 1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stages = impl.stages(x, prepared, 1)
    assert set(stages) == {"lateral", "vertical+horizontal"}
    for call in stages.values():
        call()
    torch.cuda.synchronize()


def test_tuning_keeps_the_fastest_candidate_that_matches():
    """The per-shape tuner (IMPLS_TRITON_TUNE=1 on a GPU), with a fake clock and fake
    kernels on the CPU: a wrong candidate is dropped even when fastest, a failing one is
    skipped, the fastest matching one wins."""
    from impls.triton_fused import _tune

    ref = torch.arange(6.0)
    outputs = {"default": ref, "wrong": ref + 1, "close": ref * (1 + 1e-7), "slow": ref.clone()}
    clock = {"default": 3.0, "wrong": 0.5, "close": 1.0, "slow": 9.0}

    def run(tile):
        if tile == "broken":
            raise RuntimeError("does not compile")
        return outputs[tile], outputs[tile] * 2

    def seconds(fn, reps):
        fn()
        return clock[current[0]]

    current = [None]

    def run_tracked(tile):
        current[0] = tile
        return run(tile)

    best, times = _tune(["default", "wrong", "broken", "close", "slow"], run_tracked, seconds=seconds)
    assert best == "close" and set(times) == {"default", "close", "slow"}
    with pytest.raises(RuntimeError):
        _tune(["broken", "default"], run_tracked, seconds=seconds)  # the default must work
