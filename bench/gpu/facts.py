"""The facts stage of the GPU programme (bench/gpu/programme.py): what ran where, printed
as lines of `key value`: the pass, the commit, Python and the packages that matter, the
device as torch and NVML see it (each NVML field on its own: bench.machine._gpu_info),
each CUDA implementation's availability, and last an `impl {json}` line per
implementation (its declarations: impls.registry.describe) and a `registered` line, which
the programme builds its steps' lists from (one import of impls for the whole pass).

    python -m bench.gpu.facts [PASS]
    python -m bench.gpu.facts --impls      the implementation lines alone

Nothing runs at import (asv imports modules under bench/).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys

PACKAGES = ("torch", "triton", "cupy-cuda12x", "cupy-cuda13x", "cupy", "numpy", "onnxruntime", "onnxruntime-gpu",
            "nvidia-ml-py", "pytest", "pytest-timeout", "cffi")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi: not on the PATH"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,"
                              "power.limit", "--format=csv"], capture_output=True, text=True, timeout=20)
        return (out.stdout + out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi: {e}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--impls"]:  # the implementation lines alone (the programme's fallback)
        print_implementations()
        return 0
    print("pass", argv[0] if argv else "?")
    from bench import commit

    said = commit.git_commit()
    print("commit", said or f"unknown (no .git, no ${commit.COMMIT_ENV}, no {commit.COMMIT_FILE})")
    if os.environ.get(commit.COMMIT_ENV):
        os.environ.pop(commit.COMMIT_ENV)
        commit.git_commit.cache_clear()
        head = commit.git_commit()
        if head and head != said:  # the copy's own .git, stale: the records carry the commit above
            print("copy_git_head", head, "(not the commit measured: the records carry the one above)")
    print("python", platform.python_version(), sys.executable)
    print("platform", platform.platform())
    print("packages", json.dumps({d: v for d in PACKAGES if (v := _version(d)) is not None}, sort_keys=True))
    print(_nvidia_smi())
    sys.stdout.flush()

    import torch

    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          "cudnn", torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    if torch.cuda.is_available():
        from bench import machine

        p = torch.cuda.get_device_properties(0)
        print("device", p.name, "sm", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count,
              "L2", getattr(p, "L2_cache_size", "?"), "memory", p.total_memory)
        print("nvml", json.dumps(machine._gpu_info(), sort_keys=True, default=str))
    sys.stdout.flush()

    import impls

    for name in impls.names():
        impl = impls.get(name)
        if "cuda" in impl.devices:
            print(f"cuda {name:14} {impl.unavailable_reason('cuda') or 'available'}")
    print_implementations()
    return 0


def print_implementations() -> None:
    """An `impl {json}` line per registered implementation (impls.registry.describe: its
    devices, role, directions, what it compiles at set-up, fused, per-stage timings,
    extras), which the programme builds its steps' lists from, then `registered`."""
    import impls
    from impls import registry

    for name in impls.names():
        print("impl", json.dumps(registry.describe(impls.get(name)), sort_keys=True))
    print("registered", ",".join(impls.names()))
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
