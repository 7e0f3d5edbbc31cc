"""The OpenMP C implementations (`openmp`, `openmp_fused`) against the float64 oracle, the
rank-1 dense equivalence, random shapes, bad inputs, threads and run-time info.

Skipped with the reason when the C extension is unavailable (no compiler, failed build).
Every instruction set the CPU supports is exercised, not just the one dispatch picks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import impls
from impls import reference, verify
from impls.openmp import _ext

NAMES = ("openmp", "openmp_fused")
_REASON = impls.get("openmp").unavailable_reason("cpu")
pytestmark = pytest.mark.skipif(_REASON is not None, reason=f"OpenMP extension unavailable: {_REASON}")


def _supported_isas():
    if _REASON is not None:
        return ["default"]
    lib = _ext.load().lib
    return [name for name, code in _ext.ISAS.items() if lib.fc_cpu_supports(code)]


@contextlib.contextmanager
def _isa(name):
    if name == "default":
        yield
        return
    lib = _ext.load().lib
    before = lib.fc_isa()
    assert lib.fc_set_isa(_ext.ISAS[name]) == 0
    try:
        yield
    finally:
        lib.fc_set_isa(before)


def _case(b, c, n, h, w, k, p, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = impls.FlatParams.random(c, n, k, dtype=dtype, seed=seed)
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    oh, ow = h + 2 * p - k + 1, w + 2 * p - k + 1
    gy = torch.randn(b, n, oh, ow, generator=gen, dtype=torch.float64).to(dtype)
    return x, params, gy


def _assert_close(impl, x, params, p, gy):
    errors = verify.check(impl, x, params, p, gy)
    tol = verify.TOLERANCE[x.dtype]
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"{impl.name} {tuple(x.shape)} N={params.out_channels} k={params.kernel_size} p={p}: {bad}"


# (B, C, N, H, W, k): every padding 0..k-1 of each is tested. Batch 1, one channel,
# C != N, k = 1, even k, k = 7, non-square images, images barely larger than k.
GRID = [
    (1, 1, 1, 5, 4, 1),
    (2, 3, 5, 6, 9, 2),
    (1, 4, 3, 7, 5, 3),
    (3, 6, 10, 8, 11, 4),
    (2, 5, 9, 9, 6, 5),
    (1, 7, 4, 9, 13, 7),
    (2, 2, 3, 3, 7, 3),
]
GRID_CASES = [(*shape, p) for shape in GRID for p in range(shape[5])]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", GRID_CASES, ids=lambda c: "B{}C{}N{}H{}W{}k{}p{}".format(*c))
def test_grid_against_oracle(name, dtype, case):
    b, c, n, h, w, k, p = case
    x, params, gy = _case(b, c, n, h, w, k, p, dtype)
    _assert_close(impls.get(name), x, params, p, gy)


# Shapes that cross every blocking boundary of the kernels: C > KC (several K chunks),
# H*W > NC (several pixel blocks) and > KC (several chunks of the lateral weight
# gradient), N > the fused channel block and not a multiple of any register tile, several
# row tiles with their halo, a very wide row (one row per tile).
BLOCKING = [
    (2, 300, 70, 40, 20, 3, 1),
    (1, 3, 9, 6, 300, 3, 2),
    (2, 20, 130, 33, 17, 5, 2),
    (1, 9, 33, 70, 9, 7, 6),
    # rows a whole number of vectors wide (16 floats = one AVX-512 vector, 8 = AVX2), and
    # rows that divide a vector: the masked and register-resident V+H paths
    (2, 5, 7, 9, 32, 3, 1),
    (1, 3, 4, 12, 16, 5, 2),
    (2, 4, 6, 10, 48, 7, 3),
    (1, 2, 3, 5, 64, 1, 0),
    (2, 3, 5, 6, 8, 3, 1),
    (1, 3, 5, 7, 4, 5, 2),
    (2, 3, 5, 20, 16, 3, 0),
    (2, 6, 9, 13, 8, 5, 2),
    (1, 4, 4, 11, 4, 3, 1),
    (1, 3, 3, 9, 2, 1, 0),
    # rows dividing a vector in images taller than one fused row tile (512 pixels), with a
    # last partial group of rows in the tile and in the image; one-pixel-wide rows
    (1, 3, 5, 67, 8, 3, 1),
    (1, 2, 3, 131, 4, 5, 2),
    (1, 2, 2, 259, 2, 3, 1),
    (2, 2, 3, 9, 1, 3, 1),
    (1, 3, 4, 11, 8, 7, 3),
    # the fused forward in the GEMM's epilogue: images shorter than the kernel, a row that
    # is not a whole number of register tiles, and the fallbacks (C > KC, W > NC)
    (1, 2, 3, 1, 16, 3, 1),
    (2, 3, 9, 2, 32, 5, 2),
    (1, 4, 10, 7, 80, 3, 1),
    (1, 300, 9, 5, 16, 3, 1),
    (1, 2, 3, 3, 528, 3, 1),
    # enough channels that the fused forward's buffer cannot take taller tiles: several
    # row tiles with their halo, on the register path (W = 8, W = 32) and the generic one
    (1, 3, 200, 140, 8, 3, 1),
    (1, 2, 100, 40, 32, 5, 2),
    (1, 3, 200, 70, 9, 7, 6),
    # both channel counts >= 128, so g_l is the packed gemm_nt: channels that are no whole
    # number of register tiles, images shorter and longer than a KC chunk (with a
    # remainder), several images, more channels than an NC block
    (2, 130, 129, 5, 11, 3, 1),
    (1, 128, 140, 17, 18, 3, 1),
    (3, 129, 128, 9, 31, 3, 1),
    (1, 520, 128, 2, 3, 1, 0),
    # images smaller than the kernel, held only by the padding
    (2, 3, 4, 2, 3, 7, 3),
    (1, 2, 2, 1, 1, 3, 1),
    (1, 2, 3, 2, 5, 5, 2),
    (1, 2, 3, 3, 2, 5, 4),
]


@pytest.mark.parametrize("isa", _supported_isas())
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", BLOCKING, ids=lambda c: "B{}C{}N{}H{}W{}k{}p{}".format(*c))
def test_blocking_boundaries_every_isa(name, case, isa, dtype):
    b, c, n, h, w, k, p = case
    x, params, gy = _case(b, c, n, h, w, k, p, dtype, seed=1)
    with _isa(isa):
        _assert_close(impls.get(name), x, params, p, gy)


@pytest.mark.parametrize("isa", _supported_isas())
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_small_grid_every_isa(name, dtype, isa):
    with _isa(isa):
        for b, c, n, h, w, k in GRID:
            p = k // 2
            x, params, gy = _case(b, c, n, h, w, k, p, dtype, seed=2)
            _assert_close(impls.get(name), x, params, p, gy)



@pytest.mark.parametrize("isa", _supported_isas())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_fused_weights_prepared_under_another_isa(isa, dtype):
    """`openmp_fused` packs L at prepare for the register tile of the ISA then in use; a
    forward under another ISA (another tile height) must notice and pack again."""
    impl = impls.get("openmp_fused")
    x, params, _ = _case(2, 5, 13, 9, 16, 3, 1, dtype, seed=3)
    prepared = impl.prepare(params)
    assert prepared.extra["lateral_packed_mr"] > 0
    want = reference.forward(x.double(), params.to(dtype=torch.float64), 1)
    with _isa(isa):
        got = impl.forward(x, prepared, 1)
        got_train, _ = impl.forward_train(x, prepared, 1)
    for y in (got, got_train):
        assert verify.relative_error(y, want) <= verify.TOLERANCE[dtype]

@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_input(name):
    impl = impls.get(name)
    gen = torch.Generator().manual_seed(3)
    params = impls.FlatParams.random(5, 6, 3)
    x_nhwc = torch.randn(2, 7, 8, 5, generator=gen).permute(0, 3, 1, 2)  # channels-last view
    x_strided = torch.randn(2, 5, 7, 16, generator=gen)[..., ::2]
    for x in (x_nhwc, x_strided):
        assert not x.is_contiguous()
        gy = torch.randn(2, 6, x.shape[2], x.shape[3], generator=gen)
        _assert_close(impl, x, params, 1, gy)
        y = impl.forward(x, impl.prepare(params), padding=1)
        torch.testing.assert_close(y, impl.forward(x.contiguous(), impl.prepare(params), padding=1), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_rank1_dense_equivalence(name, k):
    impl = impls.get(name)
    gen = torch.Generator().manual_seed(4)
    params = impls.FlatParams.random(6, 4, k, dtype=torch.float64, seed=k)
    x = torch.randn(2, 6, 9, 7, generator=gen, dtype=torch.float64)
    for p in range(k):  # without inner biases the layer is the dense convolution at every padding
        plain = params.without_inner_biases()
        y = impl.forward(x, impl.prepare(plain), padding=p)
        dense = F.conv2d(x, plain.dense_weight(), plain.horizontal_bias, padding=p)
        torch.testing.assert_close(y, dense, rtol=1e-10, atol=1e-10)
    y = impl.forward(x, impl.prepare(params), padding=0)  # with biases, at padding 0
    dense = F.conv2d(x, params.dense_weight(), params.dense_bias())
    torch.testing.assert_close(y, dense, rtol=1e-10, atol=1e-10)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(NAMES),
    b=st.integers(1, 3), c=st.integers(1, 9), n=st.integers(1, 9), k=st.integers(1, 6),
    extra_h=st.integers(0, 8), extra_w=st.integers(0, 8), data=st.data(),
)
def test_property_random_shapes(name, b, c, n, k, extra_h, extra_w, data):
    p = data.draw(st.integers(0, k - 1), label="padding")
    # any image for which the padded input still holds the kernel
    h = max(1, k - 2 * p) + extra_h
    w = max(1, k - 2 * p) + extra_w
    x, params, gy = _case(b, c, n, h, w, k, p, torch.float32, seed=b * 100 + c * 10 + n)
    _assert_close(impls.get(name), x, params, p, gy)


@pytest.mark.parametrize("name", NAMES)
def test_backward_does_not_mutate_saved_and_is_deterministic(name):
    impl = impls.get(name)
    x, params, gy = _case(2, 5, 7, 10, 9, 3, 1)
    prepared = impl.prepare(params)
    y, saved = impl.forward_train(x, prepared, padding=1)
    before = {k: v.clone() for k, v in saved.tensors.items()}
    g1 = impl.backward(saved, gy).tensors()
    g2 = impl.backward(saved, gy).tensors()
    for k, v in saved.tensors.items():
        assert torch.equal(v, before[k]), k
    for field in g1:
        assert torch.equal(g1[field], g2[field]), field
    assert torch.equal(y, impl.forward(x, prepared, padding=1))


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_naming_the_argument(name):
    impl = impls.get(name)
    params = impls.FlatParams.random(4, 6, 3)
    prepared = impl.prepare(params)
    x = torch.randn(2, 4, 8, 8)
    cases = [
        (ValueError, "x:", lambda: impl.forward(x[0], prepared, padding=1)),
        (ValueError, "x:", lambda: impl.forward(torch.randn(2, 5, 8, 8), prepared, padding=1)),
        (ValueError, "padding:", lambda: impl.forward(x, prepared, padding=3)),
        (ValueError, "padding:", lambda: impl.forward(x, prepared, padding=-1)),
        (TypeError, "padding:", lambda: impl.forward(x, prepared, padding=1.0)),
        (TypeError, "padding:", lambda: impl.forward(x, prepared, padding=True)),
        (ValueError, "x:", lambda: impl.forward(torch.randn(2, 4, 1, 8), prepared, padding=0)),
        (TypeError, "x:", lambda: impl.forward(x.double(), prepared, padding=1)),
        (TypeError, "x:", lambda: impl.forward(x.half(), prepared, padding=1)),
        (TypeError, "x:", lambda: impl.forward(x.numpy(), prepared, padding=1)),
        (TypeError, "params:", lambda: impl.prepare(params.to(dtype=torch.float16))),
        (ValueError, "prepared:", lambda: impl.forward(x, impls.get("naive").prepare(params), padding=1)),
    ]
    other = NAMES[1 - NAMES.index(name)]
    cases.append((ValueError, "prepared:", lambda: impl.forward(x, impls.get(other).prepare(params), padding=1)))
    y, saved = impl.forward_train(x, prepared, padding=1)
    cases += [
        (ValueError, "grad_y:", lambda: impl.backward(saved, torch.randn(2, 6, 8, 7))),
        (TypeError, "grad_y:", lambda: impl.backward(saved, torch.randn(2, 6, 8, 8, dtype=torch.float64))),
        (TypeError, "saved:", lambda: impl.backward(None, y)),
    ]
    for exc, text, call in cases:
        with pytest.raises(exc, match=text):
            call()


@pytest.mark.parametrize("shape", [(2, 8, 9, 12, 10), (2, 130, 129, 5, 11)], ids=["dot_block", "gemm_nt"])
@pytest.mark.parametrize("name", NAMES)
def test_threads(name, shape):
    impl = impls.get(name)
    before = impl.runtime_info()["threads"]
    x, params, gy = _case(*shape, 3, 1)
    prepared = impl.prepare(params)
    try:
        results = []
        for threads in (1, 2, 3):
            impl.set_num_threads(threads)
            assert impl.runtime_info()["threads"] == threads
            y, saved = impl.forward_train(x, prepared, padding=1)
            results.append((impl.forward(x, prepared, padding=1), y, impl.backward(saved, gy).tensors()))
        for y_fwd, y_train, grads in results[1:]:
            torch.testing.assert_close(y_fwd, results[0][0], rtol=0, atol=0)
            torch.testing.assert_close(y_train, results[0][1], rtol=0, atol=0)
            for field, g in grads.items():  # no sum is split between threads
                torch.testing.assert_close(g, results[0][2][field], rtol=0, atol=0)
    finally:
        impl.set_num_threads(before)
    for bad, exc in ((0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)):
        with pytest.raises(exc, match="threads"):
            impl.set_num_threads(bad)


@pytest.mark.parametrize("name", NAMES)
def test_runtime_info(name):
    info = impls.get(name).runtime_info()
    assert info["available"] is True
    assert info["isa"] in {"avx512", "avx2+fma"} or info["isa"].startswith(("sse2", "baseline"))
    assert info["isa"] in info["isa_supported"]
    assert info["openmp_version"] >= 201107
    assert info["threads"] >= 1
    assert "gomp" in info["openmp_runtime"] or "omp" in info["openmp_runtime"]
    assert isinstance(info["openmp_shared_with_torch"], bool)


def test_stages_match_the_layer():
    x, params, _ = _case(2, 6, 7, 9, 8, 3, 1)
    ref = reference.forward(x, params, 1).float()
    stages = impls.get("openmp").stages(x, impls.get("openmp").prepare(params), 1)
    assert list(stages) == ["lateral", "vertical", "horizontal"]
    t1 = stages["lateral"]()
    torch.testing.assert_close(t1, reference.forward(x, params, 1, keep=True)[1]["t1"].float(), rtol=1e-4, atol=1e-4)
    stages["vertical"]()
    torch.testing.assert_close(stages["horizontal"](), ref, rtol=1e-4, atol=1e-4)
    fused = impls.get("openmp_fused")
    stages = fused.stages(x, fused.prepare(params), 1)
    assert list(stages) == ["lateral", "vertical+horizontal"]
    stages["lateral"]()
    torch.testing.assert_close(stages["vertical+horizontal"](), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="padding:"):
        fused.stages(x, fused.prepare(params), 3)


def test_missing_compiler_is_reported_not_raised(tmp_path):
    """Without the built module and with a compiler that fails, `import impls` works and
    unavailable_reason says why (run on a copy of the package, in a subprocess)."""
    src = os.path.dirname(os.path.dirname(impls.__file__))
    shutil.copytree(os.path.join(src, "impls"), tmp_path / "impls",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    env = dict(os.environ, CC="false", PYTHONPATH=str(tmp_path), FLATCONV_CACHE_DIR=str(tmp_path / "cache"))
    for var in ("FLATCONV_OPENMP_SANITIZE", "FLATCONV_OPENMP_NO_BUILD", "FLATCONV_OPENMP_ISA", "LD_PRELOAD"):
        env.pop(var, None)
    code = ("import json, impls; print(json.dumps({n: [impls.get(n).unavailable_reason('cpu'), "
            "impls.get(n).runtime_info()] for n in ('openmp', 'openmp_fused')}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    reason = seen["openmp_fused"][0]
    assert re.fullmatch(r"the C extension is not built at install time and building it failed \([^\n]+\); "
                        r"`python impls/openmp/_build\.py` shows the compiler output", reason), reason
    assert seen == {n: [reason, {"available": False, "reason": reason}] for n in ("openmp", "openmp_fused")}, seen


@pytest.mark.slow  # builds the kernels twice and times them
def test_abtest_times_two_builds_against_each_other():
    """abtest.sh builds the working tree's kernels twice (unoptimised here, to be quick) and
    abtest.c prints the ratio line with the instruction set it ran (FLATCONV_OPENMP_ISA forces
    one); a bad argument is exit status 2."""
    if shutil.which("cc") is None or shutil.which("git") is None:
        pytest.skip("abtest.sh needs cc and git")
    script = os.path.join(os.path.dirname(_ext.__file__), "abtest.sh")
    env = dict(os.environ, ABTEST_CFLAGS="-O0", OMP_NUM_THREADS="2")
    run = subprocess.run(["bash", script, "work", "work", "train", "3", "5", "7", "3", "2", "0.1"],
                         env=dict(env, FLATCONV_OPENMP_ISA="baseline"), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert re.match(r"train 3,5,7,3 batch 2 (sse2|baseline)", run.stdout), run.stdout  # the forced ISA, named
    assert ": B/A " in run.stdout, run.stdout
    unknown = subprocess.run(["bash", script, "work", "work", "train", "3", "5", "7", "3", "2", "0.1"],
                             env=dict(env, FLATCONV_OPENMP_ISA="avx1024"), capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "avx1024" in unknown.stderr, unknown.stderr
    bad = subprocess.run(["bash", script, "work", "work", "train", "3", "5", "2", "3"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and "S >= k" in bad.stderr, bad.stderr
