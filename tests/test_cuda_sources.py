"""Every .cu file under impls/ compiles with nvcc for sm_80 and sm_90 (CPU only: nvcc
needs no GPU), so kernel code cannot rot where CI has no device. Each file carries
explicit instantiations outside NVRTC, so this compiles real kernels, not just
templates. Skipped, with the reason, where nvcc is missing."""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CU_FILES = sorted((ROOT / "impls").rglob("*.cu"))
ARCHES = ("sm_80", "sm_90")
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH (CUDA toolkit not installed)")


def test_there_are_cuda_sources():
    assert CU_FILES, "no .cu files found under impls/"


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("source", CU_FILES, ids=[str(p.relative_to(ROOT)) for p in CU_FILES])
def test_compiles_with_nvcc(source, arch, tmp_path):
    out = tmp_path / (source.stem + f".{arch}.cubin")
    cmd = [NVCC, "-std=c++17", "--cubin", f"-arch={arch}", "--resource-usage", "-Werror", "all-warnings",
           "-o", str(out), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert out.stat().st_size > 0
    usage = proc.stdout + proc.stderr
    # Real kernels were compiled (explicit instantiations) ...
    assert "Compiling entry function" in usage, usage
    spills = [int(s) for s in re.findall(r"(\d+) bytes spill stores", usage)]
    assert spills, usage
    # ... and none spills registers on sm_90 (H100/H200, the target). On sm_80 the float
    # GEMM at its 128-register cap (2 blocks/SM) spills 12 bytes: see the kernels' README.
    if arch == "sm_90":
        assert max(spills) == 0, usage
