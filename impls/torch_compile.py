"""`torch_compile`: `torch.compile` of the composed three-stage layer.

The compiled function is the same math as `torch` (impls/composed.py): three
`F.conv2d` calls with their biases. The benchmarks run what a user gets from
`torch.compile(layer)`: inductor, default mode, static shapes, one compiled graph per
input shape. (On the CPU inductor keeps the convolutions as oneDNN calls, runs them
channels-last and adds C++ kernels for the NCHW <-> NHWC copies.)

Inference runs the compiled function under no_grad (inductor's inference graph).
Training runs it under autograd on leaf aliases (no copies) of the input and the six
parameters, so AOTAutograd partitions the layer into a compiled forward graph and a
compiled backward graph. `forward_train` keeps the autograd graph (the output with its
grad_fn, and the input leaf) in the saved tensors, and `backward` is
`torch.autograd.grad(y, leaves, grad_y, retain_graph=True)` on it: the compiled
backward graph of a training step, timed alone and repeatable, never mutating `saved`.
Compiling one joint forward+backward function instead could not time backward alone and
is not what `torch.compile` gives a training loop. The one difference from a training
loop: the backward runs without AOTAutograd's donated buffers (which let it overwrite
saved activations, and so forbid a second backward on the same graph).

Each compiled function is specialized to one key (direction, device, dtype, input and
parameter shapes, padding, threads) and has a fresh code object: dynamo keeps its cache
on the code object, so every key has one entry (no walk over other shapes' guards on a
call, and dynamo's recompile limit of 8 per code object never sends a long sweep back to
eager). The thread count is in the key because inductor's C++ kernels bake
`torch.get_num_threads()` in when they are generated.

Compilation happens on the first call for a key (the benchmark harness gates and warms
up before it times); `compile_stats()` counts dynamo's compile events exactly, through
its compile-start/end callbacks, while one of this implementation's calls runs.
Inductor's on-disk caches (TORCHINDUCTOR_CACHE_DIR) make a repeated compilation, even in
a new process, several times cheaper; it still counts as one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sysconfig
import threading
import time
import types
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from .base import Implementation, reason_once_per_device
from .composed import _CUDA_FLOATS
from .params import FlatGrads


def _composed(x, lat, lb, vert, vb, hor, hb, p: int):
    n, c = lat.shape
    k = vert.shape[1]
    t1 = F.conv2d(x, lat.view(n, c, 1, 1), lb)
    t2 = F.conv2d(t1, vert.view(n, 1, k, 1), vb, padding=(p, 0), groups=n)
    return F.conv2d(t2, hor.view(n, 1, 1, k), hb, padding=(0, p), groups=n)


def _fresh_function(tag: str):
    """`_composed` with a code object of its own: dynamo keeps its cache of compiled
    entries on the code object."""
    code = _composed.__code__.replace(co_name=f"flatconv_{tag}")
    return types.FunctionType(code, _composed.__globals__, code.co_name)


class _CompileCounter:
    """Dynamo's compile events (a new frame compiled, a backward graph compiled lazily)
    that start while this counter is active, and the wall seconds they take."""

    def __init__(self):
        self.compilations = 0
        self.seconds = 0.0
        self._active = 0
        self._started: float | None = None
        self._lock = threading.Lock()
        self._start_cb = self._on_start  # bound once: registered and looked up by identity
        self._end_cb = self._on_end
        self._handler = None

    def _ensure_registered(self) -> None:
        # Checked on every call: torch._dynamo.reset() (torch.compiler.reset()) clears
        # every callback along with the compiled code, and the next call recompiles.
        handler = self._handler
        if handler is None:
            from torch._dynamo.callback import callback_handler

            handler = self._handler = callback_handler
        if self._start_cb not in handler.start_callbacks:
            handler.register_start_callback(self._start_cb)
        if self._end_cb not in handler.end_callbacks:
            handler.register_end_callback(self._end_cb)

    def _on_start(self, args) -> None:
        if self._active:
            self._started = time.perf_counter()

    def _on_end(self, args) -> None:
        if self._started is not None:
            with self._lock:
                self.compilations += 1
                self.seconds += time.perf_counter() - self._started
            self._started = None

    def add_seconds(self, seconds: float) -> None:
        with self._lock:
            self.seconds += seconds

    def __enter__(self):
        self._ensure_registered()
        self._active += 1
        return self

    def __exit__(self, *exc):
        self._active -= 1


def _cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on the CPU (its default search, without
    conda's download), or None."""
    cxx = os.environ.get("CXX", "g++")
    return shutil.which(cxx)


class TorchCompile(Implementation):
    name = "torch_compile"
    role = "peer"
    devices = ("cpu", "cuda")
    dtypes = {"cpu": (torch.float32, torch.float64), "cuda": _CUDA_FLOATS}
    description = ("torch.compile (inductor, default mode, static shapes) of the three F.conv2d calls; "
                   "backward through the compiled AOTAutograd backward graph")
    summary = ("`torch.compile` (inductor, default mode, static shapes) of the three `F.conv2d` calls; backward "
               "through the compiled backward graph")
    compiles = "graphs"

    def __init__(self, *, mode: str | None = None, options: dict[str, Any] | None = None):
        # mode and options go to torch.compile as they are (None: the defaults, what the
        # benchmarks run); the tests' grid runs a variant with options (tests/_support.py).
        self.mode = mode
        self.options = dict(options) if options else None
        self._compiled: dict[tuple, Any] = {}
        self._backward_seen: set[tuple] = set()
        self._counter = _CompileCounter()

    # ---- availability and runtime ----------------------------------------------------
    @reason_once_per_device
    def _dependency_reason(self, device_type):
        if device_type == "cpu":
            if _cpp_compiler() is None:
                return f"torch.compile on the CPU needs a C++ compiler ({os.environ.get('CXX', 'g++')} not found; set CXX)"
            include = sysconfig.get_paths().get("include") or ""
            if not os.path.exists(os.path.join(include, "Python.h")):
                return f"torch.compile on the CPU needs Python's C headers (no Python.h in {include or '?'})"
        if device_type == "cuda":
            import importlib.util

            if importlib.util.find_spec("triton") is None:
                return "torch.compile on CUDA needs triton (not installed)"
        return None

    def runtime_info(self):
        return {
            "torch": torch.__version__,
            "backend": "inductor",
            "mode": self.mode or "default",
            "options": self.options or {},
            "dynamic": False,
            "fullgraph": True,
            "specialized_per": "direction, device, dtype, shapes, padding, threads",
            "backward": "autograd.grad(retain_graph=True) through AOTAutograd's compiled backward (no donated buffers)",
            "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default (/tmp/torchinductor_<user>)"),
            "cxx": _cpp_compiler(),
            "compiled_functions": len(self._compiled),
        }

    def compile_stats(self):
        """{"compilations": dynamo's compile events in this instance's calls: one per new
        key in forward or forward_train, one per recompilation (a guard failing, or the
        compiled code dropped by torch._dynamo.reset()), and one for a backward graph that
        AOTAutograd compiles at the first backward of a key (none when its cache already
        had it); "compile_seconds": their wall time, plus the creation of each compiled
        function (the process's first torch.compile() imports dynamo)}. Cumulative over
        the instance's life."""
        return {"compilations": self._counter.compilations, "compile_seconds": self._counter.seconds}

    # ---- compiled functions ----------------------------------------------------------
    @staticmethod
    def _key(direction, x, prm, p):
        return (direction, x.device, x.dtype, tuple(x.shape), tuple(prm.lateral.shape), prm.kernel_size, p,
                torch.get_num_threads())

    def _function(self, direction, x, prm, p):
        """(the compiled function for this call, whether this call compiles it)."""
        key = self._key(direction, x, prm, p)
        fn = self._compiled.get(key)
        if fn is not None:
            return fn, False
        # dynamic=False: static kernels per shape, as a model that sees one input shape per
        # layer gets them; with dynamo's default the second shape a code object sees
        # compiles as dynamic, and a sweep's numbers would depend on the order of its cases.
        start = time.perf_counter()  # the first torch.compile() of a process imports dynamo: seconds
        fn = torch.compile(_fresh_function(f"{direction}_{len(self._compiled)}"), mode=self.mode,
                           options=self.options, dynamic=False, fullgraph=True)
        self._counter.add_seconds(time.perf_counter() - start)
        self._compiled[key] = fn
        return fn, True

    def _prepare(self, params):
        # Leaf aliases of the parameters for training (no copy): autograd.grad takes the
        # gradients with respect to these.
        leaves = tuple(t.detach().requires_grad_(True) for t in params.tensors().values())
        return {"leaves": leaves}

    def _forward(self, x, prepared, p):
        prm = prepared.params
        fn, compiles = self._function("forward", x, prm, p)
        with self._counter, _compiling(compiles):
            return fn(x, prm.lateral, prm.lateral_bias, prm.vertical, prm.vertical_bias, prm.horizontal,
                      prm.horizontal_bias, p)

    def _forward_train(self, x, prepared, p):
        prm = prepared.params
        fn, compiles = self._function("train", x, prm, p)
        x_leaf = x.detach().requires_grad_(True)
        with torch.enable_grad(), self._counter, _compiling(compiles):
            y = fn(x_leaf, *prepared.extra["leaves"], p)
        # The caller gets the output without its graph; saved keeps the graph for backward.
        return y.detach(), {"y": y, "x": x_leaf}

    def _backward(self, saved, gy):
        t = saved.tensors
        # AOTAutograd compiles the backward graph at the first backward of a key (counted
        # by compile_stats). retain_graph keeps the graph and its saved activations for
        # the next backward on the same `saved`; a first backward with retain_graph also
        # makes AOTAutograd compile the backward without donated buffers.
        key = self._key("train", saved.x, saved.prepared.params, saved.padding)
        first = key not in self._backward_seen
        with self._counter, _compiling(first, donated_buffer=False):
            grads = torch.autograd.grad(t["y"], (t["x"], *saved.prepared.extra["leaves"]), gy, retain_graph=True)
        self._backward_seen.add(key)
        return FlatGrads(*grads)


@contextlib.contextmanager
def _compiling(compiles: bool, donated_buffer: bool = False):
    """Around a call that compiles (the first for its key): AOTAutograd's donated buffers
    off (they let a compiled backward overwrite saved activations, which forbids running
    it again with retain_graph, and an AOTAutograd cache entry made by a plain training
    loop would carry them), and torch's own DeprecationWarnings from importing inductor
    out of the benchmark's output."""
    if not compiles:
        yield
        return
    import torch._functorch.config

    with warnings.catch_warnings(), torch._functorch.config.patch(donated_buffer=donated_buffer):
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


IMPLEMENTATIONS = [TorchCompile()]
