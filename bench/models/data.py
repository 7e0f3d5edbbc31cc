"""The data: scikit-learn's bundled 8x8 digits (no download), and CIFAR-10 read from the
standard python batches in a local folder (never downloaded)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F

from .networks import SEED

DIGITS_TEST_FRACTION = 0.2


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


def cifar_normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR10_MEAN, device=x_uint8.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=x_uint8.device).view(1, 3, 1, 1)
    return (x_uint8.float() / 255.0 - mean) / std


def cifar_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random 32x32 crop of the 4-pixel zero-padded image."""
    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip.to(x.device).view(b, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()  # one offset per batch: cheap
    return padded[:, :, dy:dy + 32, dx:dx + 32]

