"""Interchangeable implementations of the flattened convolution layer.

    import impls
    impl = impls.get("torch")
    prepared = impl.prepare(impls.FlatParams.random(64, 64, 3))
    y = impl.forward(x, prepared, padding=1)

See docs/DESIGN.md (the contract) and impls/README.md.

The names below load on first use (PEP 562), so `import impls.shapes`, the layer
arithmetic the reports need, does not import torch or any implementation.
"""

from __future__ import annotations

import importlib

# public name -> the submodule that defines it
_EXPORTS = {
    "FlatGrads": "params", "FlatParams": "params", "FlattenedConv2d": "module", "Implementation": "base",
    "Prepared": "base", "Saved": "base", "LayerShape": "shapes", "get": "registry", "names": "registry",
    "register": "registry",
}
_SUBMODULES = ("reference", "shapes", "verify", "base", "params", "registry", "module")

__all__ = sorted(_EXPORTS) + ["reference", "shapes"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'impls' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
