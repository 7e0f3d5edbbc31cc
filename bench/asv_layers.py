"""asv benchmarks of the flattened layer: time, peak memory and GFLOP/s per
(implementation, device, layer) for forward, backward and train.

The layer table comes from the environment variable BENCH_ASV_PRESET (comma-separated
tables, default "paper"). asv runs this file against old commits too: whatever such a
commit lacks (an implementation, a layer) makes `setup` raise NotImplementedError, which
asv records as skipped. Set-up and the gate are the harness driver's (bench/driver.py).
"""

import os

try:
    from bench import asv_support, cases, memory, tables, timing

    IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 - an old commit's package may lack what bench needs
    asv_support = cases = memory = tables = timing = None
    IMPORT_ERROR = f"{type(e).__name__}: {e}"

TABLES = [t for t in os.environ.get("BENCH_ASV_PRESET", "paper").split(",") if t]
DEVICES, IMPL_NAMES = cases.asv_grid() if cases else (["cpu"], ["dense", "torch"])
LAYERS = [f"{t}:{r.name}" for t in TABLES for r in tables.rows(t)] if tables else []


class _Layer:
    """Shared setup: one gated, warmed-up case per parameter combination."""

    direction = "forward"
    params = [IMPL_NAMES, DEVICES, LAYERS]
    param_names = ["impl", "device", "layer"]
    timeout = 600
    warmup_time = 0.2
    repeat = (3, 20, 10.0)

    def setup(self, impl, device, layer):
        if IMPORT_ERROR:
            raise NotImplementedError(IMPORT_ERROR)
        table, row_name = layer.split(":", 1)
        try:
            row = tables.find(table, row_name)
        except ValueError:
            raise NotImplementedError(f"layer {layer} is not in this version's tables") from None
        self.bench = asv_support.set_up(cases.Case(impl, device, table, row, "float32", self.direction))

    def track_peak_bytes(self, impl, device, layer):
        return memory.peak_bytes(self.bench)[0]

    track_peak_bytes.unit = "bytes"

    def track_gflops(self, impl, device, layer):
        flops = self.bench.case.describe()["flops"]
        if flops is None:
            raise NotImplementedError("this version's impls.shapes cannot count the case's FLOPs")
        return flops / timing.measure(self.bench, asv_support.TRACK_RULE)["time_median"] / 1e9

    track_gflops.unit = "GFLOP/s"


class Forward(_Layer):
    direction = "forward"

    def time_forward(self, impl, device, layer):
        self.bench.call()

    def track_params(self, impl, device, layer):
        return self.bench.case.describe()["params"]

    track_params.unit = "parameters"


class Backward(_Layer):
    direction = "backward"

    def time_backward(self, impl, device, layer):
        self.bench.call()


class Train(_Layer):
    direction = "train"

    def time_train(self, impl, device, layer):
        self.bench.call()
