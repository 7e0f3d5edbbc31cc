"""asv benchmarks of the flattened layer: time, peak memory and GFLOP/s per
(implementation, device, layer) for forward, backward and train.

The grid (tables from BENCH_ASV_PRESET, default the small `ci` one; implementations from
BENCH_ASV_IMPLS) is bench/asv_support.py's. asv runs this file against old commits too:
whatever such a commit lacks (an implementation, a layer) makes `setup` raise
NotImplementedError, which asv records as skipped. Set-up and the gate are the harness
driver's (bench/driver.py).
"""

try:
    from bench import asv_support, cases, memory, schema, tables, timing

    IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 - an old commit's package may lack what bench needs
    asv_support = cases = memory = schema = tables = timing = None
    IMPORT_ERROR = f"{type(e).__name__}: {e}"

DEVICES, IMPL_NAMES = asv_support.grid() if asv_support else (["cpu"], ["dense", "torch"])
LAYERS = asv_support.layers() if asv_support else []
SAMPLING = asv_support.SAMPLING if asv_support else {"processes": 1, "repeat": 1, "warmup_time": 0, "timeout": 60}


class _Layer:
    """Shared setup: one gated, warmed-up case per parameter combination."""

    direction = "forward"
    params = [IMPL_NAMES, DEVICES, LAYERS]
    param_names = ["impl", "device", "layer"]
    processes, repeat = SAMPLING["processes"], SAMPLING["repeat"]
    warmup_time, timeout = SAMPLING["warmup_time"], SAMPLING["timeout"]

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
        return memory.peak(self.bench)["peak_bytes"]

    track_peak_bytes.unit = "bytes"

    if not (asv_support and asv_support.CI_ONLY):  # the full grid only: the rate follows from time_ anyway
        def track_gflops(self, impl, device, layer):
            flops = self.bench.case.describe()["flops"]
            if flops is None:
                raise NotImplementedError("this version's impls.shapes cannot count the case's FLOPs")
            seconds = timing.measure(self.bench, asv_support.TRACK_RULE)["time_median"]
            return schema.rates(flops, None, seconds)["gflops"]

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
