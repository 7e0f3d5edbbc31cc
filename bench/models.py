"""Model level (issue 7): a baseline CNN and its flattened twin in the paper's style.

The flattened twin replaces every k x k convolution of the baseline, the first one too,
by a *flattened layer* of l = 2 lateral-vertical-horizontal stages: two
`impls.FlattenedConv2d` in sequence, each stage with a bias after every 1-D convolution
and no nonlinearity inside the layer (Jin, Dundar, Culurciello 2015). The ReLU and pooling
between layers are the baseline's. Padding: every stage uses "same" padding k // 2 (odd
k), so each stage, the composed layer and the baseline's convolution all keep the
spatial size; the composed flattened layer sees a (2k - 1) x (2k - 1) window.

Commands (see bench/MODELS.md):

    python -m bench.models params [--config cifar]
    python -m bench.models digits --json PATH [--filters PNG] [--impl NAME] [--epochs N]
    python -m bench.models cifar10 --data DIR --json PATH [--device cuda] [--impl NAME] [--epochs N]

This module stays light at import (asv imports every module under bench/): torch only;
`impls`, scikit-learn and matplotlib are imported where they are used. It defines no
module-level names that asv would take for benchmarks.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import pickle
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# Defaults shared by the CLI and the asv track_ benchmarks (bench/asv_models.py), so a
# tracked accuracy is exactly what `python -m bench.models digits` prints.
SEED = 0
# One thread: these nets are tiny, and on a shared 2-core machine two threads were 5-15x
# slower than one (OpenMP barriers under contention; 1 epoch of the flattened net: 1.4-4 s
# at 1 thread, 21 s at 2, load average ~150).
THREADS = 1
DIGITS_EPOCHS = 20
DIGITS_BATCH = 32
DIGITS_LR = 2e-3
DIGITS_TEST_FRACTION = 0.2
CIFAR_EPOCHS = 30
CIFAR_BATCH = 128
CIFAR_LR = 2e-3


# --------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def load_digits_split(seed: int = SEED, test_fraction: float = DIGITS_TEST_FRACTION, limit: int | None = None):
    """scikit-learn's bundled 8x8 digits (1797 images, no download), scaled to [0, 1] and
    standardised with the training mean and std; a fixed permutation (numpy
    default_rng(seed)) puts the first `test_fraction` in the test set. `limit` keeps the
    first `limit` images of the permutation (for smoke tests)."""
    import numpy as np
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32) / 16.0
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    if limit is not None:
        order = order[:limit]
    n_test = int(round(len(order) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(), x[train].std()
    xt = torch.from_numpy((x - mean) / std).unsqueeze(1)
    yt = torch.from_numpy(y)
    split = {"method": f"numpy.random.default_rng({seed}).permutation, first {test_fraction:g} is test",
             "seed": seed, "train": int(len(train)), "test": int(len(test))}
    return (xt[train], yt[train]), (xt[test], yt[test]), split


CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _read_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"{path}: expected a CIFAR-10 python batch (a dict with b'data' and b'labels'), got {keys}")
    import numpy as np

    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{path}: expected b'data' of shape (N, 3072) and N labels, "
                         f"got {data.shape} and {len(labels)} labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels.copy())


def load_cifar10(data_dir: str | os.PathLike) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """CIFAR-10 from the standard python-pickle batches (data_batch_1..5, test_batch) in
    `data_dir` or in its `cifar-10-batches-py` subfolder. Never downloads. Returns
    ((x_train, y_train), (x_test, y_test)) with x uint8 (N, 3, 32, 32), y int64."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder {str(root)!r} does not exist (this loader never downloads; "
                                "extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
                                "and pass the cifar-10-batches-py folder)")
    if not (root / CIFAR10_TEST_FILE).exists() and (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 folder {str(root)!r} lacks {', '.join(missing)} (expected the python "
                                f"batches {', '.join(names)}; this loader never downloads)")
    parts = [_read_cifar_batch(root / n) for n in CIFAR10_TRAIN_FILES]
    train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    return train, _read_cifar_batch(root / CIFAR10_TEST_FILE)


def _cifar_normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR10_MEAN, device=x_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=x_uint8.device).view(1, 3, 1, 1)
    return (x_uint8.float() / 255.0 - mean) / std


def _cifar_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random 32x32 crop of the 4-pixel zero-padded image."""
    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip.to(x.device).view(b, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()  # one offset per batch: cheap
    return padded[:, :, dy:dy + 32, dx:dx + 32]


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------
def _evaluate(model, x, y, batch, prepare, device) -> tuple[float, float]:
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = prepare(x[i:i + batch].to(device))
            yb = y[i:i + batch].to(device)
            out = model(xb)
            loss += F.cross_entropy(out, yb, reduction="sum").item()
            correct += (out.argmax(1) == yb).sum().item()
    model.train()
    return loss / len(x), correct / len(x)


def train_model(model: nn.Module, train, test, *, epochs: int, batch_size: int, lr: float, seed: int = SEED,
                device: str = "cpu", prepare=None, augment=None, log=None) -> dict:
    """Adam with cosine learning-rate decay, a seeded shuffle per epoch; test loss and
    accuracy after every epoch. Returns {"test_accuracy", "train_seconds", "history"}."""
    prepare = prepare or (lambda t: t)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(train[0]) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = train
    history, total = [], 0.0
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(len(x_train), generator=gen)
        loss_sum, seen = 0.0, 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb = prepare(x_train[idx].to(device))
            if augment is not None:
                xb = augment(xb, gen)
            yb = y_train[idx].to(device)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
        if device != "cpu" and torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        total += seconds
        test_loss, test_acc = _evaluate(model, test[0], test[1], 4 * batch_size, prepare, device)
        history.append({"epoch": epoch, "loss": loss_sum / seen, "test_loss": test_loss,
                        "test_accuracy": test_acc, "seconds": seconds})
        if log:
            log(f"  epoch {epoch:3d}  loss {loss_sum / seen:.4f}  test loss {test_loss:.4f}  "
                f"test acc {test_acc:.4f}  {seconds:.1f} s")
    return {"test_accuracy": history[-1]["test_accuracy"] if history else None, "train_seconds": total,
            "history": history}


def _metadata(**extra) -> dict:
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import subprocess

        here = Path(__file__).resolve().parent
        meta["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                        cwd=here, timeout=10).stdout.strip() or None
        # Uncommitted changes to the code that trained the networks (bench/, impls/).
        status = subprocess.run(["git", "status", "--porcelain", "--", "bench", "impls"], capture_output=True,
                                text=True, cwd=here.parent, timeout=10)
        meta["dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except Exception:  # noqa: BLE001 - metadata only
        meta["commit"] = meta["dirty"] = None
    meta.update(extra)
    return meta


def run_pair(config: NetConfig | str, train, test, *, impl: str, seed: int, epochs: int, batch_size: int, lr: float,
             device: str = "cpu", prepare=None, augment=None, log=None) -> dict:
    """Train the baseline and the flattened twin alike; the JSON body of both commands."""
    out = {}
    for kind in ("baseline", "flattened"):
        model = ConvNet(config, kind, impl=impl, seed=seed)
        summary = param_summary(model)
        if log:
            log(f"{kind}: {summary['params']} parameters ({summary['conv_params']} in convolutions)")
        result = train_model(model, train, test, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             device=device, prepare=prepare, augment=augment, log=log)
        out[kind] = {"impl": impl if kind == "flattened" else "nn.Conv2d", **summary, **result, "model": model}
    b, f = out["baseline"]["conv_params"], out["flattened"]["conv_params"]
    out["conv_param_reduction"] = 1.0 - f / b
    return out


def _finish(result: dict, meta: dict, json_path, filters_path, log) -> dict:
    models = {k: result[k].pop("model") for k in ("baseline", "flattened")}
    if filters_path:
        save_filters(models["baseline"], models["flattened"], filters_path)
        meta["filters"] = os.path.relpath(filters_path, Path(json_path).parent) if json_path else str(filters_path)
    doc = {**meta, "conv_param_reduction": result["conv_param_reduction"],
           "baseline": result["baseline"], "flattened": result["flattened"]}
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(doc, indent=1) + "\n")
        if log:
            log(f"wrote {json_path}")
    return doc


def digits_experiment(*, impl: str = "torch", epochs: int = DIGITS_EPOCHS, seed: int = SEED, threads: int = THREADS,
                      batch_size: int = DIGITS_BATCH, lr: float = DIGITS_LR, limit: int | None = None,
                      json_path=None, filters_path=None, log=None) -> dict:
    """Train both networks on scikit-learn's digits on the CPU; the `digits` command and the
    asv track_ benchmarks. Deterministic for a given seed and thread count."""
    torch.set_num_threads(threads)
    train, test, split = load_digits_split(seed, limit=limit)
    cfg = get_config("digits")
    result = run_pair(cfg, train, test, impl=impl, seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, log=log)
    meta = _metadata(dataset="digits", source="sklearn.datasets.load_digits", config=dataclasses.asdict(cfg),
                     seed=seed, split=split, epochs=epochs, batch_size=batch_size, lr=lr,
                     optimizer="Adam, cosine decay per step", impl=impl, device="cpu", threads=threads,
                     padding="same (k // 2) in each of the l = 2 stages")
    return _finish(result, meta, json_path, filters_path, log)


def cifar10_experiment(data_dir, *, impl: str = "torch", device: str = "cpu", epochs: int = CIFAR_EPOCHS,
                       seed: int = SEED, threads: int | None = None, batch_size: int = CIFAR_BATCH, lr: float = CIFAR_LR,
                       limit: int | None = None, augment: bool = True, json_path=None, filters_path=None,
                       log=None) -> dict:
    """Train both networks on CIFAR-10 read from `data_dir` (never downloaded)."""
    if threads:
        torch.set_num_threads(threads)
    (xtr, ytr), (xte, yte) = load_cifar10(data_dir)
    if limit is not None:
        xtr, ytr, xte, yte = xtr[:limit], ytr[:limit], xte[:limit], yte[:limit]
    if device != "cpu":
        xtr, ytr, xte, yte = (t.to(device) for t in (xtr, ytr, xte, yte))
    cfg = get_config("cifar")
    result = run_pair(cfg, (xtr, ytr), (xte, yte), impl=impl, seed=seed, epochs=epochs, batch_size=batch_size,
                      lr=lr, device=device, prepare=_cifar_normalize,
                      augment=_cifar_augment if augment else None, log=log)
    meta = _metadata(dataset="cifar10", source=str(data_dir), config=dataclasses.asdict(cfg), seed=seed,
                     split={"method": "the standard split (data_batch_1..5 / test_batch)",
                            "train": int(len(xtr)), "test": int(len(xte))},
                     epochs=epochs, batch_size=batch_size, lr=lr, optimizer="Adam, cosine decay per step",
                     augment="random flip + 4-pixel crop" if augment else None, impl=impl, device=device,
                     gpu=torch.cuda.get_device_name() if device.startswith("cuda") else None,
                     threads=torch.get_num_threads(), padding="same (k // 2) in each of the l = 2 stages")
    return _finish(result, meta, json_path, filters_path, log)


# --------------------------------------------------------------------------------------
# Reconstructed filters
# --------------------------------------------------------------------------------------
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


def save_filters(baseline: ConvNet, flattened: ConvNet, path, max_filters: int = 32) -> Path:
    """A PNG with three rows of first-layer filters: the baseline's dense k x k filters;
    the rank-1 k x k filters of the flattened layer's first stage
    (FlatParams.dense_weight: lateral x vertical x horizontal); and the whole flattened
    first layer (both stages composed, biases dropped, (2k-1) x (2k-1), not rank-1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("baseline conv1 (dense k x k)", baseline.convs[0].weight.detach().cpu()),
        ("flattened conv1, stage 1: rank-1 L x V x H", flattened.convs[0][0].params().detach().to("cpu").dense_weight()),
        ("flattened conv1, both stages composed (2k-1)", composed_first_layer(flattened)),
    ]
    n = min(max_filters, panels[0][1].shape[0])
    fig, axes = plt.subplots(len(panels), n, figsize=(n * 0.42, len(panels) * 0.62 + 0.2), squeeze=False)
    for row, (title, w) in enumerate(panels):
        for j in range(n):
            ax = axes[row][j]
            f = w[j]
            f = (f - f.min()) / (f.max() - f.min() + 1e-12)  # each filter scaled to [0, 1] alone
            if f.shape[0] == 3:
                ax.imshow(f.permute(1, 2, 0).numpy(), interpolation="nearest")
            else:
                ax.imshow(f.mean(0).numpy(), cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_title(title, fontsize=7, loc="left", pad=2)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.01, wspace=0.08, hspace=0.45)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------
# Benchmark cases: the "model" table of both suites (bench/test_models_bench.py, asv_models.py)
# --------------------------------------------------------------------------------------
MODEL_TABLE = "model"
MODEL_DIRECTIONS = ("forward", "train")
# Which network configs each layer preset brings into the model table (the suites share
# the layer suites' --preset option), and the batch per (config, device).
MODEL_PRESETS = {"smoke": ("digits",), "paper": ("cifar",), "sweep": ()}
MODEL_BATCH = {("digits", "cpu"): 8, ("digits", "cuda"): 8, ("cifar", "cpu"): 8, ("cifar", "cuda"): 128,
               ("mnist", "cpu"): 8, ("mnist", "cuda"): 128}
BASELINE_IMPL = "dense"  # the model case named "dense" is the baseline network (nn.Conv2d)


@dataclasses.dataclass(frozen=True)
class ModelCase:
    """(implementation, device, network config, dtype, direction). impl "dense" means the
    baseline network (dense nn.Conv2d layers); any other implementation runs the
    flattened twin. direction: "forward" (inference, no autograd graph) or "train" (one
    SGD step: forward, cross-entropy, backward, parameter update)."""

    impl: str
    device: str
    config: str
    dtype: str = "float32"
    direction: str = "forward"

    @property
    def network(self) -> str:
        return "baseline" if self.impl == BASELINE_IMPL else "flattened"

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
        """The record fields of this case (see harness.record): the network as the layer."""
        cfg = get_config(self.config)
        summary = param_summary(ConvNet(cfg, self.network, impl="torch"))
        return {
            "impl": self.impl, "device": self.device, "table": MODEL_TABLE, "shape": self.config,
            "network": self.network, "batch": self.batch, "in_channels": cfg.in_channels,
            "out_channels": cfg.num_classes, "height": cfg.image_size, "width": cfg.image_size,
            "kernel_size": cfg.kernel_size, "padding": cfg.kernel_size // 2, "dtype": self.dtype,
            "direction": self.direction, "params": summary["params"], "conv_params": summary["conv_params"],
            "flops": _network_flops(self), "bytes": None,
        }


def model_configs(presets) -> list[str]:
    out = []
    for preset in presets:
        for name in MODEL_PRESETS.get(preset, ()):
            if name not in out:
                out.append(name)
    return out


def select_model_cases(presets, *, impl_names=None, devices=None, directions=MODEL_DIRECTIONS,
                       dtypes=("float32",)) -> list[ModelCase]:
    """Model cases for the layer presets given (smoke -> digits, paper -> cifar), filtered
    like the layer cases; directions other than forward/train have no model case."""
    import impls

    names = list(impl_names) if impl_names else impls.names()
    unknown = [n for n in names if n not in impls.names()]
    if unknown:
        raise ValueError(f"impl: unknown {unknown}; known: {', '.join(impls.names())}")
    out = []
    for config in model_configs(presets):
        for device in devices or ("cpu", "cuda"):
            for name in names:
                if device not in impls.get(name).devices:
                    continue
                for dtype in dtypes:
                    for direction in directions:
                        if direction in MODEL_DIRECTIONS:
                            out.append(ModelCase(name, device, config, dtype, direction))
    return out


def _network_flops(case: ModelCase) -> int:
    """FLOPs of the network's convolutions for one batch (impls.shapes counts, the ReLUs,
    pooling and classifier left out); train counts forward + backward."""
    from impls.shapes import LayerShape

    cfg = get_config(case.config)
    direction = "train" if case.direction == "train" else "forward"
    size, total = cfg.image_size, 0
    for (c, n, k), pool in zip(cfg.layer_shapes(), cfg.pool):
        p = k // 2
        if case.network == "baseline":
            total += LayerShape(case.batch, c, n, size, size, k, p).flops(direction, "dense")
        else:
            total += LayerShape(case.batch, c, n, size, size, k, p).flops(direction, "flat")
            total += LayerShape(case.batch, n, n, size, size, k, p).flops(direction, "flat")
        size //= 2 if pool else 1
    return total


def setup_model_case(case: ModelCase, threads: int | None = None, warmup: bool = True):
    """Build the network, gate it against its float64 twin (same weights, impl "torch"
    or nn.Conv2d, float64) and return a warmed-up harness.Bench whose `call` runs the case
    once. Raises harness.Unavailable or harness.GateFailed like harness.setup_case."""
    import impls
    from impls import verify

    from . import harness

    if case.impl not in impls.names():
        raise harness.Unavailable(f"implementation {case.impl!r} does not exist in this version")
    impl = impls.get(case.impl)
    if case.device not in impl.devices:
        raise harness.Unavailable(f"{case.impl} runs on {', '.join(impl.devices)} only, not {case.device}")
    if case.device == "cuda" and not torch.cuda.is_available():
        raise harness.Unavailable("no CUDA device (torch.cuda.is_available() is False)")
    dtype = harness.DTYPES[case.dtype]
    if case.network == "flattened":
        reason = impl.unavailable_reason(case.device)
        if reason is not None:
            raise harness.Unavailable(reason)
        if not impl.supports_dtype(case.device, dtype):
            raise harness.Unavailable(f"{case.impl} on {case.device} does not support {case.dtype}")
    threads = harness.set_threads(threads)
    if case.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True

    cfg = get_config(case.config)
    impl_name = case.impl if case.network == "flattened" else "torch"
    model = ConvNet(cfg, case.network, impl=impl_name, seed=SEED).to(device=case.device, dtype=dtype)
    oracle = ConvNet(cfg, case.network, impl="torch", seed=SEED).to(device=case.device, dtype=torch.float64)
    oracle.load_state_dict({k: v.to(torch.float64) for k, v in model.state_dict().items()})
    gen = torch.Generator().manual_seed(sum(map(ord, case.config)))
    x64 = torch.randn(case.batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen,
                      dtype=torch.float64).to(case.device)
    y = torch.randint(0, cfg.num_classes, (case.batch,), generator=gen).to(case.device)
    x = x64.to(dtype)

    # Correctness gate: output, and for train every parameter's gradient.
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
    # The network's error compounds over its layers: ten times the layer tolerance.
    tol = 10 * verify.tolerance(dtype)
    bad = {k: v for k, v in errors.items() if not v <= tol}
    if bad:
        worst = max(bad, key=bad.get)
        raise harness.GateFailed(f"{worst} differs from the float64 network: relative error {bad[worst]:.3g} > "
                                 f"{tol:g} (all failing: {', '.join(sorted(bad))})")

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

    if case.device == "cuda":
        def call():
            raw()
            torch.cuda.synchronize()
    else:
        call = raw
    bench = harness.Bench(case, call, raw, errors, impl, threads=threads)
    bench.model = model
    if warmup:
        bench.warmup_calls = harness.warm_up(call)
    return bench


def model_record(case: ModelCase, *, stats: dict | None = None, **fields) -> dict:
    """One model-table result in the layer records' schema (harness.record) with table
    "model", shape = the network config, `params` the whole network's, and images/s."""
    from . import harness

    extra = {"images_per_s": case.batch / stats["time_median"]} if stats and stats.get("time_median") else None
    return harness.record(case, stats=stats, extra=extra, **fields)


def measure_model(case: ModelCase, *, threads: int | None = None, min_time: float = 0.3) -> dict:
    """Set up, gate, time and measure one model case with the harness's timers; never raises
    for a case that cannot run (returns its skipped/failed record)."""
    from . import harness

    return harness.measure(case, threads=threads, min_time=min_time, graph=case.direction == "forward",
                           setup=setup_model_case, make_record=model_record)


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------
def _print_params(config: str, impl: str) -> None:
    base, flat = build_pair(config, impl=impl)
    bt, ft = param_table(base), param_table(flat)
    print(f"config {config}: {get_config(config)}")
    print(f"{'layer':6} {'shape (C->N, k)':>16} {'baseline':>10} {'flattened':>10} {'reduction':>10}")
    for b, f in zip(bt, ft):
        shape = f"{b['in_channels']}->{b['out_channels']}" + (f", {b['kernel_size']}" if b["kernel_size"] else "")
        print(f"{b['layer']:6} {shape:>16} {b['params']:>10} {f['params']:>10} {1 - f['params'] / b['params']:>10.1%}")
    bs, fs = param_summary(base), param_summary(flat)
    for key in ("conv_params", "params"):
        print(f"{key:23} {bs[key]:>10} {fs[key]:>10} {1 - fs[key] / bs[key]:>10.1%}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="per-layer parameter counts of both networks")
    p.add_argument("--config", default="cifar", choices=sorted(CONFIGS))
    p.add_argument("--impl", default="torch")
    for name, helptext in (("digits", "train both on scikit-learn's 8x8 digits (CPU)"),
                           ("cifar10", "train both on CIFAR-10 from a local folder")):
        p = sub.add_parser(name, help=helptext)
        if name == "cifar10":
            p.add_argument("--data", required=True, help="folder with data_batch_1..5 and test_batch")
            p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
            p.add_argument("--limit", type=int, default=None, help="use only the first N train and test images")
            p.add_argument("--no-augment", action="store_true")
        else:
            p.add_argument("--limit", type=int, default=None, help="use only N images of the permutation (smoke runs)")
        p.add_argument("--json", help="write the results here (reports read reports/results/*.models.json)")
        p.add_argument("--filters", help="write the first layer's reconstructed filters as a PNG")
        p.add_argument("--impl", default="torch", help="implementation of the flattened network (impls.names())")
        p.add_argument("--epochs", type=int, default=DIGITS_EPOCHS if name == "digits" else CIFAR_EPOCHS)
        p.add_argument("--seed", type=int, default=SEED)
        p.add_argument("--threads", type=int, default=THREADS if name == "digits" else None)
        p.add_argument("--batch-size", type=int, default=DIGITS_BATCH if name == "digits" else CIFAR_BATCH)
        p.add_argument("--lr", type=float, default=DIGITS_LR if name == "digits" else CIFAR_LR)
    args = parser.parse_args(argv)

    def log(msg):
        print(msg, flush=True)

    if args.command == "params":
        _print_params(args.config, args.impl)
        return 0
    common = dict(impl=args.impl, epochs=args.epochs, seed=args.seed, threads=args.threads,
                  batch_size=args.batch_size, lr=args.lr, json_path=args.json, filters_path=args.filters, log=log)
    if args.command == "digits":
        doc = digits_experiment(limit=args.limit, **common)
    else:
        doc = cifar10_experiment(args.data, device=args.device, limit=args.limit, augment=not args.no_augment,
                                 **common)
    b, f = doc["baseline"], doc["flattened"]
    log(f"test accuracy: baseline {b['test_accuracy']:.4f} ({b['train_seconds']:.1f} s), "
        f"flattened[{args.impl}] {f['test_accuracy']:.4f} ({f['train_seconds']:.1f} s); "
        f"conv parameters {b['conv_params']} -> {f['conv_params']} ({doc['conv_param_reduction']:.1%} fewer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
