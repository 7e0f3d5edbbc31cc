"""Parameters and gradients of one flattened layer (docs/DESIGN.md, "The layer").

`FlatParams` holds the six tensors of one lateral-vertical-horizontal stage and checks
that their shapes, dtypes and devices agree; `FlatGrads` holds the gradient of the input
and of each parameter, with the same field names.
"""

from __future__ import annotations

import dataclasses

import torch

PARAM_FIELDS = (
    "lateral",
    "lateral_bias",
    "vertical",
    "vertical_bias",
    "horizontal",
    "horizontal_bias",
)


@dataclasses.dataclass(frozen=True)
class FlatParams:
    """Weights of one flattened layer: lateral (N, C), vertical (N, k), horizontal (N, k),
    each with a bias of shape (N,)."""

    lateral: torch.Tensor
    lateral_bias: torch.Tensor
    vertical: torch.Tensor
    vertical_bias: torch.Tensor
    horizontal: torch.Tensor
    horizontal_bias: torch.Tensor

    def __post_init__(self):
        for name in PARAM_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"FlatParams.{name}: expected a torch.Tensor, got {type(value).__name__}")
            if not value.is_floating_point():
                raise TypeError(f"FlatParams.{name}: expected a floating-point tensor, got dtype {value.dtype}")
        if self.lateral.dim() != 2:
            raise ValueError(f"FlatParams.lateral: expected shape (N, C), got {tuple(self.lateral.shape)}")
        n, c = self.lateral.shape
        if n < 1 or c < 1:
            raise ValueError(f"FlatParams.lateral: expected N >= 1 and C >= 1, got shape {tuple(self.lateral.shape)}")
        if self.vertical.dim() != 2 or self.vertical.shape[0] != n or self.vertical.shape[1] < 1:
            raise ValueError(f"FlatParams.vertical: expected shape ({n}, k) with k >= 1, got {tuple(self.vertical.shape)}")
        k = self.vertical.shape[1]
        if tuple(self.horizontal.shape) != (n, k):
            raise ValueError(f"FlatParams.horizontal: expected shape ({n}, {k}) like vertical, got {tuple(self.horizontal.shape)}")
        for name in ("lateral_bias", "vertical_bias", "horizontal_bias"):
            shape = tuple(getattr(self, name).shape)
            if shape != (n,):
                raise ValueError(f"FlatParams.{name}: expected shape ({n},), got {shape}")
        for name in PARAM_FIELDS[1:]:
            value = getattr(self, name)
            if value.dtype != self.lateral.dtype:
                raise TypeError(f"FlatParams.{name}: expected dtype {self.lateral.dtype} like lateral, got {value.dtype}")
            if value.device != self.lateral.device:
                raise ValueError(f"FlatParams.{name}: expected device {self.lateral.device} like lateral, got {value.device}")

    # Derived sizes -----------------------------------------------------------------
    @property
    def in_channels(self) -> int:
        return self.lateral.shape[1]

    @property
    def out_channels(self) -> int:
        return self.lateral.shape[0]

    @property
    def kernel_size(self) -> int:
        return self.vertical.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self.lateral.dtype

    @property
    def device(self) -> torch.device:
        return self.lateral.device

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in PARAM_FIELDS}

    def replace(self, **changes) -> "FlatParams":
        return dataclasses.replace(self, **changes)

    def to(self, device=None, dtype=None) -> "FlatParams":
        return FlatParams(**{k: v.to(device=device, dtype=dtype) for k, v in self.tensors().items()})

    def contiguous(self) -> "FlatParams":
        return FlatParams(**{k: v.contiguous() for k, v in self.tensors().items()})

    def detach(self) -> "FlatParams":
        return FlatParams(**{k: v.detach() for k, v in self.tensors().items()})

    def without_inner_biases(self) -> "FlatParams":
        """The same weights with lateral and vertical biases set to zero: the case in which
        the layer equals the rank-1 dense convolution at every padding."""
        return self.replace(
            lateral_bias=torch.zeros_like(self.lateral_bias),
            vertical_bias=torch.zeros_like(self.vertical_bias),
        )

    # Rank-1 dense equivalent (docs/DESIGN.md, "The layer") ---------------------------
    def dense_weight(self) -> torch.Tensor:
        """W[n, c, i, j] = lateral[n, c] * vertical[n, i] * horizontal[n, j]."""
        return (
            self.lateral[:, :, None, None]
            * self.vertical[:, None, :, None]
            * self.horizontal[:, None, None, :]
        )

    def dense_bias(self) -> torch.Tensor:
        """The dense bias that makes the equivalence exact when padding is 0 (and, when
        lateral and vertical biases are zero, at every padding)."""
        sum_v = self.vertical.sum(1)
        sum_h = self.horizontal.sum(1)
        return self.horizontal_bias + self.vertical_bias * sum_h + self.lateral_bias * sum_v * sum_h

    @classmethod
    def random(
        cls,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        device="cpu",
        dtype=torch.float32,
        seed: int = 0,
    ) -> "FlatParams":
        """Seeded normal weights scaled so every stage keeps roughly unit variance, and
        non-zero biases (zeros would hide bias and padding mistakes)."""
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"FlatParams.random: {name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"FlatParams.random: {name} must be >= 1, got {value}")
        gen = torch.Generator().manual_seed(seed)

        def normal(*shape, scale=1.0):
            # Drawn in float64 on the CPU so every device and dtype sees the same values.
            t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
            return t.to(device=device, dtype=dtype)

        n, c, k = out_channels, in_channels, kernel_size
        return cls(
            lateral=normal(n, c, scale=c**-0.5),
            lateral_bias=normal(n, scale=0.1),
            vertical=normal(n, k, scale=k**-0.5),
            vertical_bias=normal(n, scale=0.1),
            horizontal=normal(n, k, scale=k**-0.5),
            horizontal_bias=normal(n, scale=0.1),
        )


@dataclasses.dataclass(frozen=True)
class FlatGrads:
    """Gradient of the loss with respect to the layer's input and its six parameters."""

    input: torch.Tensor
    lateral: torch.Tensor
    lateral_bias: torch.Tensor
    vertical: torch.Tensor
    vertical_bias: torch.Tensor
    horizontal: torch.Tensor
    horizontal_bias: torch.Tensor

    FIELDS = ("input",) + PARAM_FIELDS

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.FIELDS}
