"""The registry of implementations: `names()`, `get(name)`, `register(impl)`.

Each implementation module exposes `IMPLEMENTATIONS`, a list of instances; the modules
below are imported once, in order, then those named in the environment variable
FLATCONV_IMPLS (comma-separated module names: implementations of your own, measured by
every entry point without editing this file, in child processes too). A module must
import without its optional dependencies (CuPy, a C compiler): it reports their absence
through `unavailable_reason`, never by failing to import.
"""

from __future__ import annotations

import importlib
import os

from .base import Implementation

_MODULES = (
    "impls.naive",
    "impls.im2col",
    "impls.composed",
    "impls.dense",
    "impls.openmp",
    "impls.cupy_kernels",
    "impls.torch_compile",
    "impls.onnxruntime_impl",
    "impls.triton_fused",
)

_REGISTRY: dict[str, Implementation] = {}


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


def _load() -> None:
    extra = [m.strip() for m in os.environ.get("FLATCONV_IMPLS", "").split(",") if m.strip()]
    for module in _MODULES + tuple(extra):
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


_load()
