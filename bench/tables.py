"""Named layer tables. APPEND-ONLY: never edit or reorder a row, so results stay
comparable across commits; add a new row (or a new table) instead.

Each row is (name, in_channels C, out_channels N, size H = W, kernel_size k, padding p).
The batch is a property of the table and device (see BATCH), not of the row.
"""

from __future__ import annotations

import dataclasses
import random

from impls.shapes import LayerShape


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    in_channels: int
    out_channels: int
    size: int
    kernel_size: int
    padding: int

    def shape(self, batch: int) -> LayerShape:
        return LayerShape(batch, self.in_channels, self.out_channels, self.size, self.size, self.kernel_size, self.padding)


def _row(c, n, s, k, p=None):
    p = k // 2 if p is None else p  # "same" padding by default
    return Row(f"c{c}-n{n}-s{s}-k{k}" + ("" if p == k // 2 else f"-p{p}"), c, n, s, k, p)


TABLES: dict[str, list[Row]] = {
    # Seconds on any machine: CI runs these.
    "smoke": [
        _row(4, 6, 9, 3),
        _row(3, 8, 8, 5, 0),
    ],
    # Layers of CIFAR-style networks like the paper's, the anchors' layers, and a first layer.
    "paper": [
        _row(3, 64, 32, 3),
        _row(64, 64, 32, 3),
        _row(128, 128, 16, 3),
        _row(256, 256, 8, 3),
        _row(32, 32, 64, 5),
        _row(3, 96, 32, 5),
        _row(128, 128, 32, 3),
        _row(256, 256, 16, 3),
        _row(128, 128, 32, 5),
        _row(512, 512, 8, 3),
    ],
    # C = N from 32 to 512, H = W from 8 to 64, k in 3/5/7 (a seeded subset by default).
    "sweep": [_row(c, c, s, k) for c in (32, 64, 128, 256, 512) for s in (8, 16, 32, 64) for k in (3, 5, 7)],
    # Two layers of the paper table: asv's default grid, small enough for a CI job.
    "ci": [
        _row(64, 64, 32, 3),
        _row(128, 128, 16, 3),
    ],
    # The layers the GPU performance goals are stated on (batch 64, "same" padding).
    "goals": [
        _row(128, 128, 32, 3),
        _row(256, 256, 16, 3),
        _row(256, 256, 32, 3),
        _row(128, 128, 32, 5),
    ],
}

# Batch per (table, device): small on a 2-core CPU, GPU-filling on a GPU.
BATCH = {
    ("smoke", "cpu"): 2, ("smoke", "cuda"): 2,
    ("paper", "cpu"): 8, ("paper", "cuda"): 64,
    ("sweep", "cpu"): 8, ("sweep", "cuda"): 64,
    ("ci", "cpu"): 8, ("ci", "cuda"): 64,
    ("goals", "cpu"): 8, ("goals", "cuda"): 64,
}
SWEEP_SUBSET = 12  # rows of the sweep run by default; --all-rows runs every row


def rows(table: str, all_rows: bool = False) -> list[Row]:
    """The rows of a table; for `sweep`, a seeded subset unless all_rows."""
    if table not in TABLES:
        raise ValueError(f"table: unknown {table!r}; known: {', '.join(TABLES)}")
    selected = TABLES[table]
    if table == "sweep" and not all_rows:
        selected = sorted(random.Random(0).sample(selected, SWEEP_SUBSET), key=TABLES[table].index)
    return list(selected)


def batch(table: str, device: str) -> int:
    return BATCH[(table, device)]


def find(table: str, name: str) -> Row:
    """The row called `name` in `table` (every row, not only the default subset)."""
    for row in rows(table, all_rows=True):
        if row.name == name:
            return row
    raise ValueError(f"row: no {name!r} in table {table!r}")
