"""Training both networks alike, and the two experiments (digits on the CPU, CIFAR-10
from a local folder) whose JSON the reports read."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import cifar_augment, cifar_normalize, load_cifar10, load_digits_split
from .filters import save_filters
from .networks import SEED, ConvNet, NetConfig, get_config, param_summary

# Defaults shared by the CLI and the asv track_ benchmarks (bench/asv_models.py), so a
# tracked accuracy is exactly what `python -m bench.models digits` prints.
# One thread: these nets are tiny, and on a shared 2-core machine two threads were 5-15x
# slower than one (OpenMP barriers under contention; 1 epoch of the flattened net: 1.4-4 s
# at 1 thread, 21 s at 2, load average ~150).
THREADS = 1
DIGITS_EPOCHS = 20
DIGITS_BATCH = 32
DIGITS_LR = 2e-3
CIFAR_EPOCHS = 30
CIFAR_BATCH = 128
CIFAR_LR = 2e-3


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
                      lr=lr, device=device, prepare=cifar_normalize,
                      augment=cifar_augment if augment else None, log=log)
    meta = _metadata(dataset="cifar10", source=str(data_dir), config=dataclasses.asdict(cfg), seed=seed,
                     split={"method": "the standard split (data_batch_1..5 / test_batch)",
                            "train": int(len(xtr)), "test": int(len(xte))},
                     epochs=epochs, batch_size=batch_size, lr=lr, optimizer="Adam, cosine decay per step",
                     augment="random flip + 4-pixel crop" if augment else None, impl=impl, device=device,
                     gpu=torch.cuda.get_device_name() if device.startswith("cuda") else None,
                     threads=torch.get_num_threads(), padding="same (k // 2) in each of the l = 2 stages")
    return _finish(result, meta, json_path, filters_path, log)


