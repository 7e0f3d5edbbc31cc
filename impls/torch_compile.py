"""`torch_compile`: `torch.compile` of the composed three-stage layer.

The compiled function is the same math as `torch` (impls/composed.py): three
`F.conv2d` calls with their biases. The benchmarks run what a user gets from
`torch.compile(layer)`: inductor, default mode, static shapes, one compiled graph per
input shape. (On the CPU inductor keeps the convolutions as oneDNN calls, runs them
channels-last and adds C++ kernels for the NCHW <-> NHWC copies.)

Inference is what an inductor expert deploys: an nn.Module whose weights are its
parameters (impls.composed.ComposedLayer), in eval() and under no_grad, compiled with
`torch._inductor.config.freezing = True`, inductor's documented CPU-inference setting:
the weights become constants, folded and pre-packed for oneDNN on the CPU. Frozen
weights are part of the compiled code, so the inference graph is compiled once per
parameter set (kept for the 16 sets seen last and found again by value, like
`onnxruntime`'s sessions: FlattenedConv2d prepares on every call) and per key.
`TorchCompile(freezing=False)` compiles the function of the parameters instead (the
weights as graph inputs), as training must, and as float64 on the CPU does (oneDNN
pre-packs no float64 weights).

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

from .base import Implementation, RecentParams, reason_once_per_device
from .composed import _CUDA_FLOATS, ComposedLayer
from .params import FlatGrads


def _composed(x, lat, lb, vert, vb, hor, hb, p: int):
    n, c = lat.shape
    k = vert.shape[1]
    t1 = F.conv2d(x, lat.view(n, c, 1, 1), lb)
    t2 = F.conv2d(t1, vert.view(n, 1, k, 1), vb, padding=(p, 0), groups=n)
    return F.conv2d(t2, hor.view(n, 1, 1, k), hb, padding=(0, p), groups=n)


def _layer_call(layer):
    def call(x):
        return layer(x)

    return call


def _fresh(fn, tag: str):
    """`fn` with a code object of its own (its closure kept): dynamo keeps its cache of
    compiled entries on the code object."""
    code = fn.__code__.replace(co_name=f"flatconv_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


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
    description = ("torch.compile (inductor, default mode, static shapes) of the three F.conv2d calls: inference "
                   "of the layer module with freezing (weights folded and pre-packed), backward through the "
                   "compiled AOTAutograd backward graph")
    summary = ("`torch.compile` (inductor, default mode, static shapes) of the three `F.conv2d` calls: inference "
               "frozen (weights folded and pre-packed), backward through the compiled backward graph")
    compiles = "graphs"

    def __init__(self, *, mode: str | None = None, options: dict[str, Any] | None = None, freezing: bool = True):
        # mode and options go to torch.compile as they are (None: the defaults, what the
        # benchmarks run); the tests' grid runs a variant with options (tests/_support.py).
        self.mode = mode
        self.options = dict(options) if options else None
        self.freezing = freezing
        self._frozen_sets = RecentParams()
        self._frozen_count = 0
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
            "inference": ("nn.Module with the weights as parameters, eval(), no_grad, "
                          "torch._inductor.config.freezing=True (weights folded and pre-packed), "
                          "compiled per parameter set (float64 on the CPU: unfrozen)" if self.freezing else
                          "the function of input and parameters (weights as graph inputs), no_grad, no freezing"),
            "freezing": self.freezing,
            "specialized_per": "direction, device, dtype, shapes, padding, threads",
            "backward": "autograd.grad(retain_graph=True) through AOTAutograd's compiled backward (no donated buffers)",
            "inductor_cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default (/tmp/torchinductor_<user>)"),
            "cxx": _cpp_compiler(),
            "compiled_functions": len(self._compiled) + self._frozen_count,
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
        fn = self._compile(_composed, f"{direction}_{len(self._compiled)}")
        self._compiled[key] = fn
        return fn, True

    def _frozen(self, x, prepared, p):
        """(the compiled inference module of this parameter set for this key, whether this
        call compiles it)."""
        built = prepared.extra.get("frozen")
        if built is None:  # found by value at a set's first inference only: training prepares skip it
            built = prepared.extra["frozen"] = self._frozen_sets.state(prepared.params)
        key = self._key("forward", x, prepared.params, p)
        fn = built.get(key)
        if fn is None:
            fn = built[key] = self._compile(_layer_call(ComposedLayer(prepared.params, p).eval()),
                                            f"frozen_{self._frozen_count}")
            self._frozen_count += 1
            return fn, True
        return fn, False

    def _compile(self, fn, tag: str):
        start = time.perf_counter()  # the first torch.compile() of a process imports dynamo: seconds
        compiled = torch.compile(_fresh(fn, tag), mode=self.mode, options=self.options, dynamic=False, fullgraph=True)
        self._counter.add_seconds(time.perf_counter() - start)
        return compiled

    def _prepare(self, params):
        # Leaf aliases of the parameters for training (no copy): autograd.grad takes the
        # gradients with respect to these.
        leaves = tuple(t.detach().requires_grad_(True) for t in params.tensors().values())
        return {"leaves": leaves}

    def _freezes(self, x) -> bool:
        # oneDNN pre-packs float32 (and half) weights only: frozen float64 on the CPU fails
        # to compile (mkldnn._reorder_convolution_weight), so it runs unfrozen.
        return self.freezing and not (x.device.type == "cpu" and x.dtype == torch.float64)

    def _forward(self, x, prepared, p):
        prm = prepared.params
        if self._freezes(x):
            fn, compiles = self._frozen(x, prepared, p)
            with self._counter, _compiling(compiles, freezing=True):
                return fn(x)
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
def _compiling(compiles: bool, donated_buffer: bool = False, freezing: bool = False):
    """Around a call that compiles (the first for its key): inductor's freezing as asked
    (read when the graph is compiled), AOTAutograd's donated buffers off (they let a
    compiled backward overwrite saved activations, which forbids running it again with
    retain_graph, and an AOTAutograd cache entry made by a plain training loop would carry
    them), and torch's own DeprecationWarnings from importing inductor out of the
    benchmark's output."""
    if not compiles:
        yield
        return
    import torch._functorch.config
    import torch._inductor.config

    with warnings.catch_warnings(), torch._functorch.config.patch(donated_buffer=donated_buffer), \
            torch._inductor.config.patch(freezing=freezing):
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


IMPLEMENTATIONS = [TorchCompile()]
