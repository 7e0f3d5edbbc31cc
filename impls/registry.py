"""The registry of implementations: `names()`, `get(name)`, `register(impl)`.

An implementation is one file (or subpackage) under impls/ that exposes
`IMPLEMENTATIONS`, a list of instances, each declaring what the lists of the benchmarks
and README.md's table are built from (`name`, `devices`, `role`, `summary`, `extras`,
`compiles`, `fused`: impls/base.py). The modules of the package are discovered
(pkgutil, in name order) and imported once: the contract's own modules and private ones
(a leading underscore) are passed over, and a module without `IMPLEMENTATIONS` is a
helper. Then the modules named in the environment variable FLATCONV_IMPLS
(comma-separated module names: implementations of your own, measured by every entry
point without editing this package, in child processes too). A module must import
without its optional dependencies (CuPy, a C compiler): it reports their absence through
`unavailable_reason`, never by failing to import.

    python -m impls.registry              prints README.md's implementation table
    python -m impls.registry README.md    rewrites the table between the markers of a file
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

from .base import COMPILES, ROLES, Implementation

# The contract's own modules: never implementations, not imported by the discovery.
CONTRACT_MODULES = frozenset({"base", "params", "shapes", "reference", "verify", "registry", "module"})
TABLE_MARKERS = ("<!-- impls-table -->", "<!-- /impls-table -->")
TABLE_COMMAND = "python -m impls.registry README.md"

_REGISTRY: dict[str, Implementation] = {}
_MODULES: list[str] = []  # the discovered modules that hold implementations, in import order
_DISCOVERED: list[str] = []  # the names their IMPLEMENTATIONS registered (README.md's table)


def register(impl: Implementation) -> Implementation:
    """Add an implementation under `impl.name` (a duplicate name is an error)."""
    if not isinstance(impl, Implementation):
        raise TypeError(f"impl: expected an impls.Implementation, got {type(impl).__name__}")
    if not impl.name:
        raise ValueError("impl: its name is empty")
    if impl.name in _REGISTRY:
        raise ValueError(f"impl: the name {impl.name!r} is already registered")
    _REGISTRY[impl.name] = impl
    return impl


def discover() -> list[str]:
    """The modules of the impls package that may hold implementations, in name order
    (modules and subpackages, not the contract's own modules nor private ones)."""
    package = sys.modules[__name__.rpartition(".")[0]]
    found = {m.name for m in pkgutil.iter_modules(package.__path__)}
    return [f"{package.__name__}.{m}" for m in sorted(found) if not m.startswith("_") and m not in CONTRACT_MODULES]


def _load() -> None:
    for module in discover():
        impls = getattr(importlib.import_module(module), "IMPLEMENTATIONS", None)
        if impls is None:
            continue  # a helper module
        _MODULES.append(module)
        for impl in impls:
            _DISCOVERED.append(register(impl).name)
    extra = [m.strip() for m in os.environ.get("FLATCONV_IMPLS", "").split(",") if m.strip()]
    for module in extra:
        for impl in importlib.import_module(module).IMPLEMENTATIONS:
            register(impl)


def names() -> list[str]:
    """Every registered implementation, sorted."""
    return sorted(_REGISTRY)


def get(name: str) -> Implementation:
    """The implementation called `name`; an unknown name raises ValueError listing names()."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected a str, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"name: unknown implementation {name!r}; known: {', '.join(names())}") from None


def modules() -> list[str]:
    """The discovered modules of impls/ that hold implementations, in import order."""
    return list(_MODULES)


def describe(impl: Implementation) -> dict:
    """What the lists of the benchmarks select by (a JSON-able dict): the declarations,
    and whether it has per-stage timings (it overrides `stages`)."""
    return {"name": impl.name, "devices": list(impl.devices), "role": impl.role, "directions": list(impl.directions),
            "compiles": impl.compiles, "fused": bool(impl.fused), "extras": list(impl.extras),
            "stages": type(impl).stages is not Implementation.stages}


def problems(impl: Implementation) -> list[str]:
    """What is wrong with an implementation's declarations (empty when nothing)."""
    out = []
    if impl.role not in ROLES:
        out.append(f"role {impl.role!r} is not one of {', '.join(ROLES)}")
    if not impl.devices or not all(isinstance(d, str) for d in impl.devices):
        out.append(f"devices {impl.devices!r}: expected a non-empty tuple of device types")
    if impl.compiles not in COMPILES:
        out.append(f"compiles {impl.compiles!r} is not one of {COMPILES}")
    if not isinstance(impl.extras, tuple) or not all(isinstance(e, str) and e for e in impl.extras):
        out.append(f"extras {impl.extras!r}: expected a tuple of extras' names")
    if not impl.summary.strip() or "\n" in impl.summary or "|" in impl.summary:
        out.append("summary: expected one non-empty line of Markdown without '|' (README.md's table)")
    return [f"{impl.name}: {p}" for p in out]


def _role_order(name: str) -> tuple[int, str]:
    role = get(name).role
    return (ROLES.index(role) if role in ROLES else len(ROLES), name)


def markdown_table() -> str:
    """README.md's implementation table: the implementations of impls/ (not those of
    FLATCONV_IMPLS), by role (baseline, peer, handwritten, simple), then by name."""
    rows = ["| name | device | role | pip extra | what it is |", "| --- | --- | --- | --- | --- |"]
    for name in sorted(_DISCOVERED, key=_role_order):
        impl = get(name)
        extras = ", ".join(f"`flatconv[{e}]`" for e in impl.extras)
        rows.append(f"| `{name}` | {', '.join(impl.devices)} | {impl.role} | {extras} | {impl.summary} |")
    return "\n".join(rows)


def with_table(doc: str) -> str:
    """`doc` with the text between TABLE_MARKERS replaced by markdown_table()."""
    if TABLE_MARKERS[0] not in doc or TABLE_MARKERS[1] not in doc:
        raise ValueError(f"doc: expected the markers {TABLE_MARKERS[0]} and {TABLE_MARKERS[1]}")
    start, end = doc.index(TABLE_MARKERS[0]) + len(TABLE_MARKERS[0]), doc.index(TABLE_MARKERS[1])
    return doc[:start] + "\n" + markdown_table() + "\n" + doc[end:]


def table_difference(doc: str) -> str | None:
    """None when `doc`'s table between the markers is markdown_table(), else what differs
    (the rows missing from the document, the rows it has that the registry does not, and
    the command that regenerates it)."""
    want = with_table(doc)
    if want == doc:
        return None
    start, end = doc.index(TABLE_MARKERS[0]), doc.index(TABLE_MARKERS[1])
    have = [ln for ln in doc[start:end].splitlines()[1:] if ln.strip()]
    gen = markdown_table().splitlines()
    missing = [ln for ln in gen if ln not in have]
    stale = [ln for ln in have if ln not in gen]
    said = ["the implementation table differs from the registry's"]
    said += [f"  missing: {ln}" for ln in missing] + [f"  not in the registry: {ln}" for ln in stale]
    if not missing and not stale:
        said.append("  (the same rows, in another order or spacing)")
    said.append(f"regenerate it with: {TABLE_COMMAND}")
    return "\n".join(said)


if __name__ == "__main__":
    from impls import registry as _registry  # the package's registry, not this __main__ copy

    if len(sys.argv) > 1:
        from pathlib import Path

        path = Path(sys.argv[1])
        path.write_text(_registry.with_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(_registry.markdown_table())
else:
    _load()
