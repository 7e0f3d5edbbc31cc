"""The contract every implementation keeps (docs/DESIGN.md, "The contract").

`Implementation` does all input checking in its public methods and only then calls the
subclass's `_prepare`, `_forward`, `_forward_train` and `_backward`, so C and CUDA code
never sees an unchecked tensor. A subclass declares what it supports (`devices`,
`dtypes`, `directions`), what it is (`role`), and overrides `_dependency_reason` for
missing dependencies.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any

import torch

from .params import FlatGrads, FlatParams
from .shapes import DIRECTIONS, output_size


@dataclasses.dataclass
class Prepared:
    """What `prepare` returns: the checked, contiguous parameters plus anything the
    implementation precomputed from them (a composed dense filter, packed weights...)."""

    impl: str
    params: FlatParams
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Saved:
    """What `forward_train` keeps for `backward`. `backward` never mutates it."""

    impl: str
    prepared: Prepared
    x: torch.Tensor
    padding: int
    output_shape: tuple[int, ...]
    tensors: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def _device_type(device) -> str:
    return torch.device(device).type


# What a caller can ask an implementation to compute (DIRECTIONS, defined in impls/shapes.py
# with the arithmetic of each): inference, the backward pass from what forward_train saved,
# and both in a row.

# What an implementation is, for the reports' comparisons:
#   baseline     the dense k x k convolution every speedup is measured against
#   peer         what a user would pick instead of writing kernels (framework code, a
#                compiler, another runtime, a Triton kernel)
#   handwritten  this project's own C and CUDA kernels
#   simple       the readable textbook versions (by the definition, im2col + GEMM)
ROLES = ("baseline", "peer", "handwritten", "simple")
# What an implementation compiles at set-up (its `compiles`): nothing, kernels, graphs.
COMPILES = ("", "kernels", "graphs")


def direction_need(direction: str) -> str:
    """The direction an implementation must serve to run `direction`: a per-stage
    timing (stage:<name>) is a piece of inference."""
    if not isinstance(direction, str):
        raise TypeError(f"direction: expected a str, got {type(direction).__name__}")
    if direction.startswith("stage:"):
        return "forward"
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {', '.join(DIRECTIONS)} or stage:<name>, got {direction!r}")
    return direction


def thread_count(value, what: str = "threads", *, text: bool = False) -> int:
    """A thread count: a whole number >= 1 (not a bool), else TypeError or ValueError naming
    `what`. `text`: a decimal string is read too (an option, an environment variable); else
    a string is a TypeError. Every `set_num_threads` checks its count with this, and so
    does the harness (bench/threads.py)."""
    if isinstance(value, bool):
        raise TypeError(f"{what}: expected a whole number >= 1, got {value!r}")
    if text and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{what}: expected a whole number >= 1, got {value!r}") from None
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{what}: expected a whole number >= 1, got {type(value).__name__}") from None
    if value < 1:
        raise ValueError(f"{what}: expected a whole number >= 1, got {value}")
    return value


def reason_once_per_device(find):
    """Decorator for a `_dependency_reason` that is costly to find (an import, a compiler
    looked up): it is asked on every checked call, so `find(self, device_type)` runs once
    per implementation object and device type and its answer is kept."""

    @functools.wraps(find)
    def reason(self, device_type):
        known = self.__dict__.setdefault("_dependency_reasons", {})
        if device_type not in known:
            known[device_type] = find(self, device_type)
        return known[device_type]

    return reason


class RecentParams:
    """What a runtime built for a parameter set (exported graphs, sessions, frozen compiled
    modules), kept for the `size` parameter sets seen last and found again by value:
    FlattenedConv2d prepares on every call, so a network's inference would otherwise
    rebuild every layer on every forward. Compared by value (cheap next to a layer, and
    immune to storage reuse or in-place updates: changed weights are a new set)."""

    def __init__(self, size: int = 16):
        self.size = size
        self._entries: list[tuple[FlatParams, dict]] = []

    def state(self, params: FlatParams) -> dict:
        """The dict of what was built for parameters equal to `params` (empty when new)."""
        for i, (known, built) in enumerate(self._entries):
            if _equal_params(known, params):
                self._entries.insert(0, self._entries.pop(i))
                return built
        built: dict = {}
        self._entries.insert(0, (params.replace(**{k: v.clone() for k, v in params.tensors().items()}), built))
        del self._entries[self.size:]
        return built


def _equal_params(a: FlatParams, b: FlatParams) -> bool:
    ta, tb = a.tensors(), b.tensors()
    return all(x.shape == tb[k].shape and x.dtype == tb[k].dtype and x.device == tb[k].device and torch.equal(x, tb[k])
               for k, x in ta.items())


class Implementation:
    """Base class: subclasses set `name`, `devices`, `dtypes` and `description` and
    implement the underscored hooks."""

    name: str = ""
    devices: tuple[str, ...] = ()
    # Supported dtypes per device type; float32 everywhere is required by the contract.
    dtypes: dict[str, tuple[torch.dtype, ...]] = {}
    # What it computes: every implementation serves forward; an inference-only runtime
    # declares ("forward",), and backward/train cases are then skipped with the reason.
    directions: tuple[str, ...] = DIRECTIONS
    role: str = "simple"  # one of ROLES
    description: str = ""
    # What the registry's lists are built from (impls.registry.describe()), declared in the
    # implementation's own module: a new implementation is one new file under impls/.
    # summary   one line of Markdown for README.md's implementation table (links relative
    #           to the repository's root), generated by `python -m impls.registry README.md`
    # extras    the optional extras of flatconv (pyproject.toml) it needs, e.g. ("gpu",)
    # compiles  what it compiles at set-up: "" nothing, "kernels" its own kernels once per
    #           shape (Triton), "graphs" the whole layer once per shape and direction or
    #           parameter set (torch.compile, an ONNX export and a runtime session)
    # fused     its vertical and horizontal stages run as one kernel (t2 never goes to memory)
    summary: str = ""
    extras: tuple[str, ...] = ()
    compiles: str = ""
    fused: bool = False

    @property
    def baseline(self) -> bool:
        """True for the implementation every speedup is measured against."""
        return self.role == "baseline"

    # ---- what the harness asks -----------------------------------------------------
    def unavailable_reason(self, device, direction: str | None = None) -> str | None:
        """None when this implementation can run on `device` (and, when given, compute
        `direction`: forward, backward, train or stage:<name>), else a one-line reason."""
        dev = _device_type(device)
        if dev not in self.devices:
            return f"{self.name} runs on {', '.join(self.devices)} only, not {dev}"
        reason = self._platform_reason(dev)
        if reason is None and direction is not None:
            need = direction_need(direction)
            if need not in self.directions:
                reason = (f"{self.name} serves {' and '.join(self.directions)} only (no {need})"
                          if self.directions != ("forward",) else f"{self.name} serves inference only (no {need})")
        return reason

    def _platform_reason(self, device_type: str) -> str | None:
        """The device is there and the dependencies load (None), or why not."""
        if device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device (torch.cuda.is_available() is False)"
        return self._dependency_reason(device_type)

    def _dependency_reason(self, device_type: str) -> str | None:
        """Override to report a missing library or failed build."""
        return None

    def runtime_info(self) -> dict[str, Any]:
        """What the benchmarks record about how this implementation ran (instruction set,
        OpenMP runtime and threads, compiler...). Empty unless a subclass knows more."""
        return {}

    def compile_stats(self) -> dict[str, Any] | None:
        """None for an implementation that never compiles (the default). One that compiles
        per shape or per parameter set (a JIT, an exporter and a runtime session) returns
        its cumulative totals in this process, {"compilations": int, "compile_seconds":
        float}: both only ever grow, so a caller compares two readings. Compilation
        happens in `prepare` or on the first call for a shape, never on a repeated call;
        more compilations after a timed loop than before it mean that something in the
        loop recompiled."""
        return None

    def set_num_threads(self, threads: int) -> None:
        """Set the thread count of this implementation's own runtime, if it has one that
        torch.set_num_threads does not reach (an OpenMP runtime in a C extension)."""

    def stages(self, x: torch.Tensor, prepared: Prepared, padding: int = 0) -> dict[str, Any]:
        """Zero-argument callables that each run one of this implementation's stages or
        kernels alone, on inputs computed here once (for per-kernel timings). Names are
        stage names ("lateral", "vertical", "horizontal") or fused groups joined by "+"
        ("vertical+horizontal"). Empty when the implementation has no separable stages."""
        return {}

    def supports_dtype(self, device, dtype: torch.dtype) -> bool:
        return dtype in self.dtypes.get(_device_type(device), ())

    def gate(self, params: FlatParams, padding: int) -> tuple[FlatParams, tuple[str, ...]]:
        """The parameters on which this implementation must match the oracle, and which
        gradient fields must match there. A flattened implementation matches on any
        parameters, in every field; the dense baseline overrides this."""
        return params, FlatGrads.FIELDS

    def __repr__(self) -> str:
        return f"<impls {self.name!r} on {self.devices}>"

    # ---- the contract --------------------------------------------------------------
    def prepare(self, params: FlatParams) -> Prepared:
        if not isinstance(params, FlatParams):
            raise TypeError(f"params: expected impls.FlatParams, got {type(params).__name__}")
        self._check_device_and_dtype("params", params.device, params.dtype)
        params = params.detach().contiguous()
        return Prepared(self.name, params, self._prepare(params))

    def forward(self, x: torch.Tensor, prepared: Prepared, padding: int = 0) -> torch.Tensor:
        x, padding = self._check_input(x, prepared, padding)
        with torch.no_grad():
            return self._forward(x, prepared, padding)

    def forward_train(self, x: torch.Tensor, prepared: Prepared, padding: int = 0) -> tuple[torch.Tensor, Saved]:
        self._require_direction("train")
        x, padding = self._check_input(x, prepared, padding)
        with torch.no_grad():
            y, tensors = self._forward_train(x, prepared, padding)
        return y, Saved(self.name, prepared, x, padding, tuple(y.shape), tensors)

    def backward(self, saved: Saved, grad_y: torch.Tensor) -> FlatGrads:
        self._require_direction("backward")
        if not isinstance(saved, Saved):
            raise TypeError(f"saved: expected what {self.name}.forward_train returned, got {type(saved).__name__}")
        if saved.impl != self.name:
            raise ValueError(f"saved: made by implementation {saved.impl!r}, not {self.name!r}")
        if not isinstance(grad_y, torch.Tensor):
            raise TypeError(f"grad_y: expected a torch.Tensor, got {type(grad_y).__name__}")
        if tuple(grad_y.shape) != saved.output_shape:
            raise ValueError(f"grad_y: expected shape {saved.output_shape} (the output's), got {tuple(grad_y.shape)}")
        if grad_y.dtype != saved.x.dtype:
            raise TypeError(f"grad_y: expected dtype {saved.x.dtype} like the input, got {grad_y.dtype}")
        if grad_y.device != saved.x.device:
            raise ValueError(f"grad_y: expected device {saved.x.device} like the input, got {grad_y.device}")
        with torch.no_grad():
            return self._backward(saved, grad_y.contiguous())

    # ---- checks --------------------------------------------------------------------
    def _require_direction(self, direction: str) -> None:
        if direction not in self.directions:
            raise NotImplementedError(f"{self.name} serves {', '.join(self.directions)} only, not {direction}")

    def _check_device_and_dtype(self, what: str, device: torch.device, dtype: torch.dtype) -> None:
        dev = device.type
        if dev not in self.devices:
            raise ValueError(f"{what}: {self.name} runs on {self.devices}, got a tensor on device {device}")
        reason = self.unavailable_reason(device)
        if reason is not None:
            raise ValueError(f"{what}: {self.name} is unavailable on {dev}: {reason}")
        if not self.supports_dtype(device, dtype):
            supported = ", ".join(str(d) for d in self.dtypes.get(dev, ()))
            raise TypeError(f"{what}: {self.name} on {dev} supports dtype {supported}, got {dtype}")

    def _check_input(self, x, prepared, padding) -> tuple[torch.Tensor, int]:
        if not isinstance(prepared, Prepared):
            raise TypeError(f"prepared: expected what {self.name}.prepare returned, got {type(prepared).__name__}")
        if prepared.impl != self.name:
            raise ValueError(f"prepared: made by implementation {prepared.impl!r}, not {self.name!r}")
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"x: expected a 4-D (B, C, H, W) tensor, got {x.dim()}-D with shape {tuple(x.shape)}")
        self._check_device_and_dtype("x", x.device, x.dtype)
        params = prepared.params
        if x.device != params.device:
            raise ValueError(f"x: on device {x.device} but the parameters are on {params.device}")
        if x.dtype != params.dtype:
            raise TypeError(f"x: dtype {x.dtype} but the parameters are {params.dtype}")
        if isinstance(padding, bool):
            raise TypeError("padding: expected an int, got bool")
        try:
            padding = operator.index(padding)
        except TypeError:
            raise TypeError(f"padding: expected an int, got {type(padding).__name__}") from None
        b, c, h, w = x.shape
        k = params.kernel_size
        if c != params.in_channels:
            raise ValueError(f"x: expected {params.in_channels} channels (lateral is {tuple(params.lateral.shape)}), got {c}")
        if b < 1 or h < 1 or w < 1:
            raise ValueError(f"x: expected a non-empty batch and image, got shape {tuple(x.shape)}")
        if not 0 <= padding <= k - 1:
            raise ValueError(f"padding: expected 0 <= padding <= {k - 1} (kernel_size - 1), got {padding}")
        oh, ow = output_size(h, w, k, padding)
        if oh < 1 or ow < 1:
            raise ValueError(
                f"x: kernel_size {k} is longer than the padded input {h + 2 * padding} x {w + 2 * padding} "
                f"(H x W = {h} x {w}, padding {padding})"
            )
        return x.contiguous(), padding

    # ---- hooks for subclasses ------------------------------------------------------
    def _prepare(self, params: FlatParams) -> dict[str, Any]:
        return {}

    def _forward(self, x: torch.Tensor, prepared: Prepared, padding: int) -> torch.Tensor:
        return self._forward_train(x, prepared, padding)[0]

    def _forward_train(self, x, prepared, padding) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _backward(self, saved: Saved, grad_y: torch.Tensor) -> FlatGrads:
        raise NotImplementedError
