"""Cases and their selection.

A layer case is (implementation, device, table row, dtype, direction). The direction is
forward (inference), backward (from a fixed `saved`), train (forward_train + backward),
or stage:<name> (one kernel alone, from the implementation's `stages()`).
`select_cases` turns the entry points' filters into cases; a combination that cannot run
here is kept, so that it is recorded as skipped with its reason.
"""

from __future__ import annotations

import dataclasses
import functools

import torch

import impls
from impls.shapes import DIRECTIONS

from . import gate as gate_module, tables
from .gate import DTYPES
from .names import check_names, known_impl  # noqa: F401  (bench.cases.known_impl: the driver's, the sweep's)
from .schema import ITEMSIZE
from .tables import Row

DEVICES = ("cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class Case:
    impl: str
    device: str
    table: str
    row: Row
    dtype: str = "float32"
    direction: str = "forward"  # forward | backward | train | stage:<name>

    @property
    def id(self) -> str:
        return f"{self.impl}/{self.device}/{self.table}:{self.row.name}/{self.dtype}/{self.direction}"

    @property
    def group(self) -> str:
        """The cases compared with each other: every implementation of one layer."""
        return f"{self.table}:{self.row.name}/{self.device}/{self.dtype}/{self.direction}"

    @property
    def shape(self) -> impls.LayerShape:
        return self.row.shape(tables.batch(self.table, self.device))

    def describe(self) -> dict:
        """The record fields that depend on the case alone: the layer, what the
        implementation is, its parameter count, FLOPs and minimum bytes (impls.shapes)."""
        shape = self.shape
        impl = known_impl(self.impl)
        baseline = bool(getattr(impl, "baseline", False))
        kind = "dense" if baseline else "flat"
        # (an old commit's impls.shapes, under asv, may predate work(): no rates then)
        work = getattr(shape, "work", lambda *a: (None, None))
        flops, nbytes = work(self.direction, kind, ITEMSIZE[self.dtype])
        return {"impl": self.impl, "role": getattr(impl, "role", None), "baseline": baseline,
                "device": self.device, "table": self.table, "shape": self.row.name, **shape.as_dict(),
                "dtype": self.dtype, "direction": self.direction, "params": shape.params(kind),
                "flops": flops, "bytes": nbytes}

    def set_up(self, threads: int | None = None, warmup: bool | dict = True, gate: bool = True) -> gate_module.Bench:
        return gate_module.setup_layer_case(self, threads, warmup, gate)

    def extra_fields(self, stats: dict | None) -> dict:
        return {}


@functools.lru_cache(maxsize=None)
def stage_names(impl_name: str, device: str) -> tuple[str, ...]:
    """The stages an implementation can time alone, found by asking it on a tiny layer."""
    impl = impls.get(impl_name)
    if impl.unavailable_reason(device) is not None:
        return ()
    params = impls.FlatParams.random(2, 2, 3, device=device)
    return tuple(impl.stages(torch.randn(1, 2, 4, 4, device=device), impl.prepare(params), 1))


def select_cases(tables_: list[str], *, impl_names=None, devices=None, directions=DIRECTIONS + ("stages",),
                 dtypes=("float32",), all_rows: bool = False) -> list[Case]:
    """Every case of the given tables, filtered by implementation, device, direction and
    dtype. The direction "stages" expands to each implementation's stage:<name> cases.
    Unknown names raise ValueError; unavailable combinations are kept (recorded skipped)."""
    names = check_names("impl", impl_names or impls.names(), impls.names())
    devices = check_names("device", devices or DEVICES, DEVICES)
    directions = check_names("direction", directions, DIRECTIONS + ("stages",))
    dtypes = check_names("dtype", dtypes, list(DTYPES))
    out = []
    for table in tables_:
        for row in tables.rows(table, all_rows):
            for device in devices:
                for name in names:
                    if device not in impls.get(name).devices:
                        continue
                    for dtype in dtypes:
                        for direction in directions:
                            if direction == "stages":
                                out += [Case(name, device, table, row, dtype, f"stage:{s}")
                                        for s in stage_names(name, device)]
                            else:
                                out.append(Case(name, device, table, row, dtype, direction))
    return out


def local_devices() -> list[str]:
    """The devices this machine has: the CPU, and CUDA where torch sees a GPU."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def asv_grid() -> tuple[list[str], list[str]]:
    """(devices, implementation names) for an asv parameter grid, fixed when asv discovers
    the benchmarks: only devices this machine has and implementations that run on one of
    them (asv starts a process per combination, so impossible ones cost minutes of skips)."""
    devices = local_devices()
    return devices, [n for n in impls.names() if set(impls.get(n).devices) & set(devices)]


def from_id(case_id: str):
    """The case whose `id` is `case_id` (a layer case, or a model case of bench/models)."""
    try:
        impl, device, where, dtype, direction = case_id.split("/", 4)
        table, row_name = where.split(":", 1)
    except ValueError:
        raise ValueError(f"case: expected impl/device/table:row/dtype/direction, got {case_id!r}") from None
    from .models.cases import MODEL_TABLE, ModelCase

    if table == MODEL_TABLE:
        return ModelCase(impl, device, row_name, dtype, direction)
    return Case(impl, device, table, tables.find(table, row_name), dtype, direction)
