"""The model table of the benchmark suites: end-to-end forward and training-step time of
a whole network, measured by the same driver as the layer cases and gated the same way
(bench/gate.py), against the network's float64 twin."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

import impls
from impls import reference, verify
from impls.shapes import LayerShape

from .. import gate, threads as thread_control, timing
from ..names import check_names, known_impl
from .networks import SEED, ConvNet, get_config, param_summary

MODEL_TABLE = "model"
MODEL_DIRECTIONS = ("forward", "train")
# Which network configs each layer preset brings into the model table (the suites share
# the layer suites' --preset option), and the batch per (config, device).
MODEL_PRESETS = {"smoke": ("digits",), "paper": ("cifar",), "sweep": ()}
MODEL_BATCH = {("digits", "cpu"): 8, ("digits", "cuda"): 8, ("cifar", "cpu"): 8, ("cifar", "cuda"): 128,
               ("mnist", "cpu"): 8, ("mnist", "cuda"): 128}
# The network's error compounds over its layers: ten times the layer's tolerance.
NETWORK_TOLERANCE_FACTOR = 10


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """(implementation, device, network config, dtype, direction). The baseline
    implementation (`impl.baseline`, the dense one) stands for the baseline network
    (nn.Conv2d layers); any other implementation runs the flattened twin. direction:
    "forward" (inference, no autograd graph) or "train" (one SGD step: forward,
    cross-entropy, backward, parameter update)."""

    impl: str
    device: str
    config: str
    dtype: str = "float32"
    direction: str = "forward"

    @property
    def network(self) -> str:
        return "baseline" if getattr(known_impl(self.impl), "baseline", False) else "flattened"

    @property
    def batch(self) -> int:
        return MODEL_BATCH[(self.config, self.device)]

    @property
    def id(self) -> str:
        return f"{self.impl}/{self.device}/{MODEL_TABLE}:{self.config}/{self.dtype}/{self.direction}"

    @property
    def group(self) -> str:
        return f"{MODEL_TABLE}:{self.config}/{self.device}/{self.dtype}/{self.direction}"

    def describe(self) -> dict:
        """The record fields of this case: the network stands where a layer would."""
        cfg = get_config(self.config)
        impl = known_impl(self.impl)
        summary = param_summary(ConvNet(cfg, self.network, impl="torch"))
        return {
            "impl": self.impl, "role": getattr(impl, "role", None), "baseline": self.network == "baseline",
            "device": self.device, "table": MODEL_TABLE, "shape": self.config,
            "network": self.network, "batch": self.batch, "in_channels": cfg.in_channels,
            "out_channels": cfg.num_classes, "height": cfg.image_size, "width": cfg.image_size,
            "kernel_size": cfg.kernel_size, "padding": cfg.kernel_size // 2, "dtype": self.dtype,
            "direction": self.direction, "params": summary["params"], "conv_params": summary["conv_params"],
            "flops": self.flops(), "bytes": None,
        }

    def flops(self) -> int:
        """FLOPs of the network's convolutions for one batch (impls.shapes counts; the
        ReLUs, pooling and classifier left out); train counts forward + backward."""
        cfg = get_config(self.config)
        direction = "train" if self.direction == "train" else "forward"
        size, total = cfg.image_size, 0
        for (c, n, k), pool in zip(cfg.layer_shapes(), cfg.pool):
            p = k // 2
            if self.network == "baseline":
                total += LayerShape(self.batch, c, n, size, size, k, p).flops(direction, "dense")
            else:
                total += LayerShape(self.batch, c, n, size, size, k, p).flops(direction, "flat")
                total += LayerShape(self.batch, n, n, size, size, k, p).flops(direction, "flat")
            size //= 2 if pool else 1
        return total

    def set_up(self, threads: int | None = None, warmup: bool | dict = True, gate: bool = True) -> gate.Bench:
        # A network is always gated: its float64 twin is built with it anyway.
        return setup_model_case(self, threads, warmup)

    def extra_fields(self, stats: dict | None) -> dict:
        median = (stats or {}).get("time_median")
        return {"images_per_s": self.batch / median} if median else {}


def model_configs(presets) -> list[str]:
    out = []
    for preset in presets:
        for name in MODEL_PRESETS.get(preset, ()):
            if name not in out:
                out.append(name)
    return out


def select_model_cases(tables_, *, impl_names=None, devices=None, directions=MODEL_DIRECTIONS,
                       dtypes=("float32",), all_rows: bool = False) -> list[ModelCase]:
    """Model cases for the layer presets given (smoke -> digits, paper -> cifar), from the
    same filters as bench.cases.select_cases; directions other than forward/train have no
    model case."""
    names = check_names("impl", impl_names or impls.names(), impls.names())
    out = []
    for config in model_configs(tables_):
        for device in devices or ("cpu", "cuda"):
            for name in names:
                if device not in impls.get(name).devices:
                    continue
                for dtype in dtypes:
                    for direction in directions:
                        if direction in MODEL_DIRECTIONS:
                            out.append(ModelCase(name, device, config, dtype, direction))
    return out


def setup_model_case(case: ModelCase, threads: int | None = None, warmup: bool | dict = True) -> gate.Bench:
    """Build the network, gate it against its float64 twin (same weights; the flattened
    layers through the oracle, impls.reference.Oracle, the baseline's nn.Conv2d in
    float64) and return a
    warmed-up Bench whose `call` runs the case once. Raises gate.Unavailable or
    gate.GateFailed like the layer cases."""
    dtype = gate.dtype_of(case.dtype)
    impl = gate.require(case.impl, case.device, dtype, case.direction)
    threads = thread_control.set_threads(threads)
    gate.cuda_flags(case.device)

    cfg = get_config(case.config)
    impl_name = case.impl if case.network == "flattened" else "torch"
    model = ConvNet(cfg, case.network, impl=impl_name, seed=SEED).to(device=case.device, dtype=dtype)
    oracle = ConvNet(cfg, case.network, impl=reference.Oracle(), seed=SEED).to(device=case.device, dtype=torch.float64)
    oracle.load_state_dict({k: v.to(torch.float64) for k, v in model.state_dict().items()})
    gen = torch.Generator().manual_seed(sum(map(ord, case.config)))
    x64 = torch.randn(case.batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen,
                      dtype=torch.float64).to(case.device)
    y = torch.randint(0, cfg.num_classes, (case.batch,), generator=gen).to(case.device)
    x = x64.to(dtype)

    # The gate: output, and for train every parameter's gradient.
    with torch.no_grad():
        errors = {"output": verify.relative_error(model.eval()(x), oracle.eval()(x64))}
    if case.direction == "train":
        model.train(), oracle.train()
        F.cross_entropy(model(x), y).backward()
        F.cross_entropy(oracle(x64), y).backward()
        for (name, p), (_, q) in zip(model.named_parameters(), oracle.named_parameters()):
            errors[f"grad:{name}"] = verify.relative_error(p.grad, q.grad)
        model.zero_grad(set_to_none=True)
    del oracle
    gate.check(errors, NETWORK_TOLERANCE_FACTOR * verify.tolerance(dtype), "the float64 network")

    if case.direction == "forward":
        model.eval()

        def raw():
            with torch.no_grad():
                return model(x)
    else:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)  # tiny steps: the weights stay near the gated ones

        def raw():
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

    # An optimizer step allocates and updates state a CUDA graph cannot hold.
    bench = gate.Bench(case, gate.synchronised(case.device, raw), raw, errors, impl, threads=threads,
                       graphable=case.direction == "forward")
    if warmup:
        bench.warmup_calls = timing.warm_up(bench.call, **(warmup if isinstance(warmup, dict) else {}))
    return bench
