"""`FlattenedConv2d`: an `nn.Module` that runs any registered implementation inside
autograd, through a `torch.autograd.Function` over `forward_train` and `backward`."""

from __future__ import annotations

import torch
from torch import nn

from .base import Implementation
from .params import FlatParams
from .registry import get


class _FlattenedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, impl, padding, x, lateral, lateral_bias, vertical, vertical_bias, horizontal, horizontal_bias):
        params = FlatParams(lateral, lateral_bias, vertical, vertical_bias, horizontal, horizontal_bias)
        y, saved = impl.forward_train(x, impl.prepare(params), padding=padding)
        ctx.impl, ctx.saved = impl, saved
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        g = ctx.impl.backward(ctx.saved, grad_y)  # saved stays: backward may run again (retain_graph)
        return (None, None, g.input, g.lateral, g.lateral_bias, g.vertical, g.vertical_bias, g.horizontal, g.horizontal_bias)


def _draw_seed() -> int:
    """A seed from torch's global generator: reproducible under torch.manual_seed, and
    unlike torch.seed() it does not reseed the global generator."""
    return int(torch.randint(0, 2**62, (1,)).item())


class FlattenedConv2d(nn.Module):
    """One flattened layer (lateral 1x1 C->N, vertical k x 1, horizontal 1 x k, each with
    a bias, no nonlinearity between them) computed by the implementation `impl` (a
    registered name, or an Implementation such as impls.reference.Oracle())."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 impl: str | Implementation = "torch", *, device=None, dtype=None, seed: int | None = None):
        super().__init__()
        self.impl = impl if isinstance(impl, Implementation) else get(impl)
        k = kernel_size
        if isinstance(padding, bool) or not isinstance(padding, int):
            raise TypeError(f"padding: expected an int, got {type(padding).__name__}")
        if isinstance(kernel_size, int) and not isinstance(kernel_size, bool) and not 0 <= padding <= k - 1:
            raise ValueError(f"padding: expected 0 <= padding <= {k - 1} (kernel_size - 1), got {padding}")
        self.in_channels, self.out_channels, self.kernel_size, self.padding = in_channels, out_channels, k, padding
        init = FlatParams.random(in_channels, out_channels, kernel_size, dtype=dtype or torch.get_default_dtype(),
                                 seed=_draw_seed() if seed is None else seed)
        for name, value in init.tensors().items():
            self.register_parameter(name, nn.Parameter(value.to(device)))

    def params(self) -> FlatParams:
        return FlatParams(self.lateral, self.lateral_bias, self.vertical, self.vertical_bias,
                          self.horizontal, self.horizontal_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))):
            # Inference: nothing for autograd to keep, so the implementation's forward runs
            # (the only call an inference-only implementation serves).
            return self.impl.forward(x, self.impl.prepare(self.params()), padding=self.padding)
        return _FlattenedFunction.apply(self.impl, self.padding, x, self.lateral, self.lateral_bias, self.vertical,
                                        self.vertical_bias, self.horizontal, self.horizontal_bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"padding={self.padding}, impl={self.impl.name!r}")
