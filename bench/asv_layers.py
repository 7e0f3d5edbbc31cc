"""asv benchmarks of the flattened layer: time, peak memory and GFLOP/s per
(implementation, device, layer) for forward, backward and train.

The layer table comes from the environment variable BENCH_ASV_PRESET (comma-separated
tables, default "paper"). asv runs this file against old commits too: whatever such a
commit lacks (an implementation, the harness's imports) makes `setup` raise
NotImplementedError, which asv records as skipped.
"""

import os

try:
    import impls
    from bench import harness
    from bench.shapes import rows

    IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 - an old commit's package may lack what bench needs
    impls = harness = rows = None
    IMPORT_ERROR = f"{type(e).__name__}: {e}"

TABLES = [t for t in os.environ.get("BENCH_ASV_PRESET", "paper").split(",") if t]
DEVICES, IMPL_NAMES = harness.asv_grid() if harness else (["cpu"], ["dense", "torch"])
LAYERS = [f"{t}:{r.name}" for t in TABLES for r in rows(t)] if rows else []


class _Layer:
    """Shared setup: one harness case per parameter combination."""

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
        row = next((r for r in rows(table) if r.name == row_name), None)
        if row is None:
            raise NotImplementedError(f"layer {layer} is not in this version's tables")
        case = harness.Case(impl, device, table, row, "float32", self.direction)
        try:
            self.bench = harness.setup_case(case)
        except harness.Unavailable as e:
            raise NotImplementedError(str(e)) from None

    def track_peak_bytes(self, impl, device, layer):
        return harness.peak_bytes(self.bench)[0]

    track_peak_bytes.unit = "bytes"

    def track_gflops(self, impl, device, layer):
        stats = harness.measure_time(self.bench, min_time=0.2)
        return self.bench.case.describe()["flops"] / stats["time_median"] / 1e9

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
