"""`python -m bench.models`: parameter tables and the two training experiments.

    python -m bench.models params [--config cifar]
    python -m bench.models digits --json PATH [--filters PNG] [--impl NAME] [--epochs N]
    python -m bench.models cifar10 --data DIR --json PATH [--device cuda] [--impl NAME] [--epochs N]
"""

from __future__ import annotations

import argparse
import sys

import torch

from .networks import CONFIGS, build_pair, get_config, param_summary, param_table
from .training import (CIFAR_BATCH, CIFAR_EPOCHS, CIFAR_LR, DIGITS_BATCH, DIGITS_EPOCHS, DIGITS_LR, SEED, THREADS,
                       cifar10_experiment, digits_experiment)


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
