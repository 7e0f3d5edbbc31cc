"""The networks: a baseline CNN and its flattened twin in the paper's style.

The flattened twin replaces every k x k convolution of the baseline, the first one too,
by a *flattened layer* of l = 2 lateral-vertical-horizontal stages: two
`impls.FlattenedConv2d` in sequence, each stage with a bias after every 1-D convolution
and no nonlinearity inside the layer (Jin, Dundar, Culurciello 2015). The ReLU and pooling
between layers are the baseline's. Padding: every stage uses "same" padding k // 2 (odd
k), so each stage, the composed layer and the baseline's convolution all keep the
spatial size; the composed flattened layer sees a (2k - 1) x (2k - 1) window.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

SEED = 0


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """A three-layer CNN: conv(k x k, "same") -> ReLU [-> 2x2 max-pool] per layer, then
    global average pooling and one linear classifier, so any input size >= 1 works."""

    name: str
    in_channels: int
    image_size: int  # the input size it is meant for (the net itself accepts any size)
    num_classes: int
    channels: tuple[int, ...]
    pool: tuple[bool, ...]  # 2x2 max-pool after layer i
    kernel_size: int = 5

    def __post_init__(self):
        if len(self.channels) != len(self.pool):
            raise ValueError(f"pool: expected {len(self.channels)} flags like channels, got {len(self.pool)}")
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size: expected an odd size for 'same' padding, got {self.kernel_size}")

    def layer_shapes(self) -> list[tuple[int, int, int]]:
        """(in_channels, out_channels, kernel_size) of every convolution."""
        ins = (self.in_channels,) + tuple(self.channels[:-1])
        return [(c, n, self.kernel_size) for c, n in zip(ins, self.channels)]


# k = 5 as in the paper's larger layers: with l = 2 stages a flattened layer holds about
# N*C + N*N weights against the dense N*C*k*k, so k = 3 could not reach the 85%.
CONFIGS = {
    "cifar": NetConfig("cifar", 3, 32, 10, (64, 128, 128), (True, True, False)),
    "mnist": NetConfig("mnist", 1, 28, 10, (32, 64, 64), (True, True, False)),
    "digits": NetConfig("digits", 1, 8, 10, (32, 32, 32), (False, True, False)),
}


def get_config(name: str) -> NetConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"config: unknown {name!r}; known: {', '.join(sorted(CONFIGS))}") from None


class FlattenedLayer(nn.Sequential):
    """One flattened layer of the paper: `stages` LVH stages (FlattenedConv2d) in sequence,
    C -> N then N -> N, each with "same" padding k // 2, no nonlinearity between them."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, impl: str = "torch",
                 stages: int = 2, seed: int = 0):
        import impls

        pad = kernel_size // 2
        super().__init__(*[
            impls.FlattenedConv2d(in_channels if i == 0 else out_channels, out_channels, kernel_size,
                                  padding=pad, impl=impl, seed=seed + i)
            for i in range(stages)
        ])


class ConvNet(nn.Module):
    """The baseline (`kind="baseline"`: nn.Conv2d layers) or its flattened twin
    (`kind="flattened"`: FlattenedLayer of two LVH stages, run by implementation `impl`)."""

    def __init__(self, config: NetConfig | str = "cifar", kind: str = "baseline", *, impl: str = "torch",
                 seed: int = SEED, stages: int = 2):
        super().__init__()
        cfg = get_config(config) if isinstance(config, str) else config
        if kind not in ("baseline", "flattened"):
            raise ValueError(f"kind: expected 'baseline' or 'flattened', got {kind!r}")
        self.config, self.kind = cfg, kind
        self.impl = impl if kind == "flattened" else None
        torch.manual_seed(seed)  # the baseline's convolutions and both classifiers
        convs = []
        for i, (c, n, k) in enumerate(cfg.layer_shapes()):
            if kind == "baseline":
                convs.append(nn.Conv2d(c, n, k, padding=k // 2))
            else:
                convs.append(FlattenedLayer(c, n, k, impl=impl, stages=stages, seed=1000 * seed + 10 * i))
        self.convs = nn.ModuleList(convs)
        self.classifier = nn.Linear(cfg.channels[-1], cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, pool in zip(self.convs, self.config.pool):
            x = F.relu(conv(x))
            if pool:
                x = F.max_pool2d(x, 2)
        return self.classifier(x.mean((2, 3)))


def build_pair(config: NetConfig | str = "cifar", *, impl: str = "torch", seed: int = SEED) -> tuple[ConvNet, ConvNet]:
    """(baseline, flattened) with the same config and seed."""
    return ConvNet(config, "baseline", seed=seed), ConvNet(config, "flattened", impl=impl, seed=seed)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def param_table(model: ConvNet) -> list[dict]:
    """One row per layer: name, kind, shape, parameter count (a flattened layer's row also
    lists its stages)."""
    rows = []
    for i, conv in enumerate(model.convs):
        c, n, k = model.config.layer_shapes()[i]
        row = {"layer": f"conv{i + 1}", "kind": "conv", "in_channels": c, "out_channels": n, "kernel_size": k,
               "params": _count(conv)}
        if isinstance(conv, FlattenedLayer):
            row["kind"] = f"flattened(l={len(conv)})"
            row["stages"] = [_count(s) for s in conv]
        rows.append(row)
    fc = model.classifier
    rows.append({"layer": "fc", "kind": "linear", "in_channels": fc.in_features, "out_channels": fc.out_features,
                 "kernel_size": None, "params": _count(fc)})
    return rows


def param_summary(model: ConvNet) -> dict:
    rows = param_table(model)
    return {"params": _count(model), "conv_params": sum(r["params"] for r in rows if r["layer"] != "fc"),
            "layers": rows}




def composed_first_layer(flattened: ConvNet) -> torch.Tensor:
    """The linear part (biases dropped) of the whole first flattened layer, both stages
    composed, as one dense (N, C, 2k-1, 2k-1) cross-correlation filter. It is a sum of N
    rank-1 filters convolved with rank-1 filters, so in general not rank-1."""
    layer = flattened.convs[0]
    k = layer[0].kernel_size
    size = 2 * k - 1
    c = layer[0].in_channels
    with torch.no_grad():
        x = torch.zeros(c, c, size, size)
        x[torch.arange(c), torch.arange(c), size // 2, size // 2] = 1.0  # one impulse per input channel
        for stage in layer:
            x = F.conv2d(x, stage.params().detach().to("cpu").dense_weight(), padding=k // 2)
        # x[c, n] is the impulse response of input channel c at output n: the flipped filter.
        return x.transpose(0, 1).flip(2, 3).contiguous()
