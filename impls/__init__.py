"""Interchangeable implementations of the flattened convolution layer.

    import impls
    impl = impls.get("torch")
    prepared = impl.prepare(impls.FlatParams.random(64, 64, 3))
    y = impl.forward(x, prepared, padding=1)

See DESIGN.md section 2 (the contract) and impls/README.md.
"""

from . import reference, shapes
from .base import Implementation, Prepared, Saved
from .module import FlattenedConv2d
from .params import FlatGrads, FlatParams
from .registry import get, names, register
from .shapes import LayerShape

__all__ = [
    "FlatGrads", "FlatParams", "FlattenedConv2d", "Implementation", "LayerShape", "Prepared", "Saved",
    "get", "names", "reference", "register", "shapes",
]
