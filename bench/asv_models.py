"""asv benchmarks of the model level (issue 7); see bench/MODELS.md.

`TrackDigits` trains the baseline CNN and its flattened twin once per run (asv's
`setup_cache`) with exactly the `python -m bench.models digits` defaults (seed, split,
epochs, threads fixed), and tracks both test accuracies, the parameter counts and the
training times across commits.

`ModelForward` and `ModelTrain` time one forward pass (inference) and one training step
(forward, cross-entropy, backward, SGD update) of a whole network per (implementation,
device, network config): the "model" table. The baseline implementation (dense) stands for the baseline network
(nn.Conv2d); every other implementation runs the flattened twin. The configs come from
BENCH_ASV_PRESET like bench/asv_layers.py ("paper" -> the CIFAR-sized net; "smoke" -> the
8x8 digits net; the default "ci" grid has no model case).

A commit whose `impls` lacks what the models need (FlattenedConv2d, an implementation),
an environment without scikit-learn, a missing device: `setup` raises
NotImplementedError, which asv records as skipped, never an import error.
"""

try:
    from bench import asv_support, cases, memory, models, timing

    IMPORT_ERROR = None
except Exception as e:  # noqa: BLE001 - an old commit's package may lack what bench needs
    asv_support = cases = memory = models = timing = None
    IMPORT_ERROR = f"{type(e).__name__}: {e}"

NETWORKS = ["baseline", "flattened"]
DEVICES, IMPL_NAMES = asv_support.grid() if asv_support else (["cpu"], ["dense", "torch"])
# The default `ci` grid leaves the model level out (its digits training alone takes ~40 s a commit).
CONFIGS = models.model_configs(asv_support.PRESET) if asv_support and not asv_support.CI_ONLY else []
SAMPLING = asv_support.SAMPLING if asv_support else {"processes": 1, "repeat": 1, "warmup_time": 0, "timeout": 60}


class TrackDigits:
    """Test accuracy and size of both networks trained on scikit-learn's 8x8 digits (CPU)."""

    params = [NETWORKS]
    param_names = ["network"]
    timeout = 600  # the training itself takes ~10-40 s on 2 busy cores
    number = 1
    repeat = 1

    def setup_cache(self):
        if IMPORT_ERROR:
            return {"skip": IMPORT_ERROR}
        if not CONFIGS:
            return {"skip": "the model level is not in this asv grid (BENCH_ASV_PRESET=paper brings it in)"}
        try:
            doc = models.digits_experiment(impl="torch")
        except (ImportError, AttributeError, NotImplementedError) as exc:  # old impls, no scikit-learn
            return {"skip": f"{type(exc).__name__}: {exc}"}
        return {k: {f: doc[k][f] for f in ("test_accuracy", "params", "conv_params", "train_seconds")}
                for k in NETWORKS}

    setup_cache.timeout = 600

    def setup(self, cache, network):
        if "skip" in cache:
            raise NotImplementedError(cache["skip"])

    def track_test_accuracy(self, cache, network):
        return cache[network]["test_accuracy"]

    track_test_accuracy.unit = "fraction correct"

    def track_conv_params(self, cache, network):
        return cache[network]["conv_params"]

    track_conv_params.unit = "parameters"

    def track_params(self, cache, network):
        return cache[network]["params"]

    track_params.unit = "parameters"

    def track_train_seconds(self, cache, network):
        return cache[network]["train_seconds"]

    track_train_seconds.unit = "seconds"


class _Model:
    """Shared setup: one model case per parameter combination, gated and warmed up."""

    direction = "forward"
    params = [IMPL_NAMES, DEVICES, CONFIGS]
    param_names = ["impl", "device", "config"]
    processes, repeat = SAMPLING["processes"], SAMPLING["repeat"]
    warmup_time, timeout = SAMPLING["warmup_time"], SAMPLING["timeout"]

    def setup(self, impl, device, config):
        if IMPORT_ERROR:
            raise NotImplementedError(IMPORT_ERROR)
        try:
            self.bench = asv_support.set_up(models.ModelCase(impl, device, config, "float32", self.direction))
        except (ImportError, AttributeError, TypeError) as e:  # an old impls without what the nets need
            raise NotImplementedError(f"{type(e).__name__}: {e}") from None

    def track_peak_bytes(self, impl, device, config):
        return memory.peak_bytes(self.bench)[0]

    track_peak_bytes.unit = "bytes"

    def track_images_per_second(self, impl, device, config):
        return self.bench.case.batch / timing.measure(self.bench, asv_support.TRACK_RULE)["time_median"]

    track_images_per_second.unit = "images/s"


class ModelForward(_Model):
    direction = "forward"

    def time_forward(self, impl, device, config):
        self.bench.call()


class ModelTrain(_Model):
    direction = "train"

    def time_train_step(self, impl, device, config):
        self.bench.call()
