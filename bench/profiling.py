"""Which kernels a call actually ran, by the PyTorch profiler.

The profiler (Kineto) prints a line to the process's stderr when it starts and stops,
from C++, so Python's logging cannot silence it: the file descriptor is redirected while
it runs, the two notes are dropped, and anything else it said is kept for the record.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# Kineto's notes: "USDT:2026-12-01 20:07:50 1856:1856 SyncActivityProfilerHandler.cpp:52] profiler_start"
_NOTE = re.compile(r"\] (profiler_start|profiler_stop)\s*$")


class _Said:
    lines: list[str] = []


@contextlib.contextmanager
def quiet_stderr():
    """Redirect file descriptor 2 into a temporary file for the block; yields an object
    whose `lines` (after the block) are what was written there, Kineto's notes left out."""
    said = _Said()
    said.lines = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            said.lines = [line for line in text.splitlines() if line.strip() and not _NOTE.search(line)]


_BOOKKEEPING_OPS = {"aten::empty", "aten::empty_like", "aten::new_empty", "aten::empty_strided", "aten::view",
                    "aten::as_strided", "aten::resize_", "aten::unsqueeze", "aten::squeeze", "aten::t",
                    "aten::transpose", "aten::permute", "aten::expand", "aten::reshape", "aten::view_as",
                    "aten::_unsafe_view", "aten::detach", "aten::alias", "aten::contiguous", "aten::slice",
                    "aten::select", "aten::zeros", "aten::fill_", "aten::zero_", "aten::as_strided_",
                    "aten::_reshape_alias", "aten::resolve_conj", "aten::resolve_neg"}


def kernels_ran(bench, limit: int = 20, log: list[str] | None = None) -> list[str] | None:
    """Names of what one call actually ran, by the PyTorch profiler: CUDA kernels on a
    GPU (CuPy's included), on the CPU the ATen operators by their own time (e.g.
    aten::mkldnn_convolution; C extensions are invisible to the profiler there). Sorted
    by time, at most `limit`. What the profiler printed, other than its start/stop notes,
    is appended to `log`."""
    log = [] if log is None else log
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.case.device == "cuda" else [])
    try:
        with quiet_stderr() as said:
            with profile(activities=activities) as prof:
                bench.call()
    except Exception:  # noqa: BLE001 - the profiler is optional evidence, never a failure
        return None
    if said.lines:  # anything but the start/stop notes carries information: keep it
        log.extend(said.lines)
    totals: dict[str, float] = {}
    for evt in prof.events():
        if bench.case.device == "cuda":
            if evt.device_type.name != "CUDA":
                continue
        elif not evt.name.startswith("aten::") or evt.name in _BOOKKEEPING_OPS:
            continue
        own = evt.device_time_total if bench.case.device == "cuda" else evt.self_cpu_time_total
        totals[evt.name] = totals.get(evt.name, 0.0) + own
    return sorted(totals, key=totals.get, reverse=True)[:limit]
