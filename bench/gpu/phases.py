"""Where a measurement's time goes, phase by phase, in one process: the GPU programme's
`phases` stage (bench/gpu/README.md), run before the sweeps.

    python -m bench.gpu.phases [--device cuda|cpu] [IMPL ...]

For one layer of the goals table, forward and train, each implementation goes through
what a sweep's worker does to it (bench/workers.py): set-up with the correctness gate and
warm-up, a block of timed calls, the graph and cold-cache times, peak memory, the kernels
that ran; then the sweep driver's own parts (the ceilings, the compute probe, an NVML
reading). Each phase prints `-> NAME` as it starts and `   NAME  SECONDS s  NOTE` as it
ends, flushed: a phase that hangs is the last one started when the stage is cut. Why:
the first H200 pass (h200-p1) measured nothing in 75 s of its first sweep step and its
log could not say which part of a visit held it up.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

ROW = "c128-n128-s32-k3"
IMPLS = {"cuda": ("torch", "cupy_fused", "cupy", "cudnn", "dense", "im2col", "triton_fused"),
         "cpu": ("torch", "openmp_fused")}


@contextlib.contextmanager
def phase(name: str, notes: list[str] | None = None):
    """Say `name` as it starts and its seconds as it ends (with what it put in `notes`);
    an exception is said and kept from the next phases."""
    print(f"-> {name}", flush=True)
    t0 = time.perf_counter()
    notes = [] if notes is None else notes
    try:
        yield notes
    except Exception as e:  # noqa: BLE001 - one phase's failure is a finding, not the end
        notes.append(f"FAILED {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    print(f"   {name:44} {time.perf_counter() - t0:7.2f} s  {'; '.join(notes)}".rstrip(), flush=True)


def one(impl: str, device: str, direction: str) -> None:
    from bench import driver, timing
    from bench.cases import from_id
    from bench.sweep import WARMUP_FIRST

    case = from_id(f"{impl}/{device}/goals:{ROW}/float32/{direction}")
    tag = f"{impl} {direction}"
    bench = None
    with phase(f"{tag}: set-up (gate, warm-up)") as notes:
        try:
            bench = case.set_up(None, warmup=WARMUP_FIRST, gate=True)
            notes.append(f"{bench.warmup_calls} warm-up calls")
        except driver.gate.Unavailable as e:
            notes.append(f"skipped: {e}")
    if bench is None:
        return
    with phase(f"{tag}: block of 0.01 s") as notes:
        times, _ = timing.call_times(bench, timing.StopRule(min_time=0.01, max_time=0.01, rel_ci=None, min_rounds=1))
        notes.append(f"{len(times)} calls, median {sorted(times)[len(times) // 2] * 1e3:.3f} ms")
    if device == "cuda":
        with phase(f"{tag}: graph replay") as notes:
            seconds, why = timing.graph_time(bench)
            notes.append(f"{seconds * 1e3:.3f} ms" if seconds is not None else f"none: {why}")
        with phase(f"{tag}: cold cache") as notes:
            notes.append(f"{timing.cold_median(bench) * 1e3:.3f} ms")
    with phase(f"{tag}: peak memory") as notes:
        from bench import memory

        notes.append(str(memory.peak(bench, 1).get("peak_bytes")))
    with phase(f"{tag}: kernels (profiler)") as notes:
        from bench import profiling

        kernels = profiling.kernels_ran(bench)
        notes.append(f"{len(kernels) if kernels else 0} kernels")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.phases", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=sorted(IMPLS), default="cuda")
    parser.add_argument("impls", nargs="*", help=f"implementations (default, cuda: {','.join(IMPLS['cuda'])})")
    args = parser.parse_args(argv)
    with phase("import torch, impls and the harness"):
        import torch

        import impls  # noqa: F401
        from bench import driver, gpu_state, machine, probes  # noqa: F401
    if args.device == "cuda":
        with phase("CUDA context") as notes:
            torch.zeros(1, device="cuda").add_(1)
            torch.cuda.synchronize()
            notes.append(torch.cuda.get_device_name())
    for name in args.impls or IMPLS[args.device]:
        for direction in ("forward", "train"):
            one(name, args.device, direction)
    with phase(f"ceilings on {args.device}") as notes:
        c = machine.ceilings(args.device)
        notes.append(f"copy {c['copy_gbps']:.0f} GB/s, {c['sgemm_source']} {c['sgemm_gflops']:.0f} GFLOP/s")
    with phase("compute probe") as notes:
        rate = probes.compute_probe(args.device)
        notes.append(f"{rate:.0f} GFLOP/s" if rate is not None else "none")
    if args.device == "cuda":
        with phase("NVML reading") as notes:
            notes.append(str(gpu_state.Nvml(torch.cuda.current_device()).read()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
