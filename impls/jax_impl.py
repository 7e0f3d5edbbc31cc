"""`jax`: the three stages in JAX, compiled by XLA (`jax.jit`); training through `jax.vjp`.

What a researcher would try instead of PyTorch, written as a JAX performance engineer
would after measuring: on CUDA the layer as three `jax.lax.conv_general_dilated` (the
1x1 lateral stage, then the k x 1 vertical and 1 x k horizontal stages as depthwise
convolutions, `feature_group_count=N`; NCHW/OIHW, the padding of `torch`: vertical
(p, 0), horizontal (0, p)), which XLA hands to cuDNN; on the CPU the lateral stage as a
contraction over channels (`lax.dot_general`) and each depthwise stage as its k shifted
multiply-adds, which XLA fuses into one loop (`form="taps"`), because XLA's CPU backend
has no fast grouped convolution. Measured on the 2-core Zen 4 VM (batch 8, 2 threads,
one process, median of 30 calls), forward with the convolutions against the taps:
26.0 / 1.7 ms on (64,64,32,3), 13.1 / 1.2 on (128,128,16,3), 7.1 / 0.9 on (256,256,8,3),
57.3 / 4.1 on (32,32,64,5), 55.0 / 3.8 on (128,128,32,3), and a train step 4-7x
faster; `torch` took 1.0, 1.0, 0.6, 2.5, 3.0 ms there. `Jax(form="conv")` runs the
convolutions everywhere (the comparison's figures). Each depthwise stage of the taps form
is a `jax.checkpoint`: the VJP keeps the stage's input and recomputes its shifted
slices (free) instead of keeping k copies of them.

Compilation. One XLA executable per key (direction, device, dtype, input shape, N, C, k,
padding, threads), made explicitly by `jax.jit(f).lower(specs).compile()` at the first
call for the key and cached on the instance; a repeated call runs the cached executable,
which never retraces or recompiles (it refuses inputs of another shape instead). The
parameters are arguments, not constants: new weights of the same shapes compile nothing.
`compile_stats()` counts these compilations exactly and their wall time (tracing,
lowering and XLA's compile, cuDNN/autotuning included on CUDA). JAX's persistent cache
(JAX_COMPILATION_CACHE_DIR, with JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0: by default
it keeps only compilations over 1 s) made a later process's compiles about 10x cheaper
here (0.3 s instead of 3.0 s for 9 small keys); a cache hit still counts as one.

Where the conv form's time goes on the CPU (2-core VM, 2 threads, B = 8, C = N = 128,
16 x 16, k = 3, rough): the vertical stage alone took 10.6 ms as a depthwise convolution
(6.2 ms in NHWC) and 0.28 ms as k shifted multiply-adds; the 1x1 stage 2.3 ms as a
convolution, 1.4 ms as a contraction.

Training. `forward_train` runs the compiled `jit(lambda x, p: jax.vjp(f, x, p))`: the
output and the residuals the VJP needs (t1, t2 and the stage weights), which `backward`
consumes: it runs the compiled `jit(lambda residuals, g: vjp_fn(g))` alone, so the
forward is never recomputed in backward. The VJP function is a pytree
(`jax.tree_util.Partial`); its leaves come back from the jitted forward as arrays, and a
leaf that is one of the inputs (x, a parameter) is not returned by XLA at all (it would
be a copy of x) but put back from the input at backward. `saved.tensors` holds the
residuals as torch tensors sharing JAX's buffers ("residual_<i>", in the VJP's leaf
order) and, as an attribute of the dict, the same buffers as JAX arrays, so backward
converts nothing back; a plain dict of the same tensors works too (converted by
DLPack). JAX never writes its inputs: backward leaves `saved` as it was and can be run
again. Like `torch`'s saved t1 and t2, the residuals are live memory: writing into them
(or into x) before backward changes what backward computes.

Exchange with torch: DLPack both ways (`jax.dlpack.from_dlpack(tensor)`,
`torch.from_dlpack(array)`). The input, the output gradient and the parameters become
JAX arrays on torch's memory, and the outputs and gradients become torch tensors on
JAX's buffers: no copy. One copy remains, made by JAX itself: XLA needs aligned
buffers, so a tensor whose data does not start on the alignment XLA requires (a view
with a storage offset, e.g. x[1:]) is copied on the way in (counted in
`runtime_info()["input_copies"]`); torch's own allocations are 64-byte aligned and never
are. On CUDA torch's current stream is synchronized before a tensor is handed to JAX
(JAX runs on its own streams), and every call blocks until its results are ready
(`block_until_ready`), on the CPU too (JAX's CPU dispatch is asynchronous), since the
harness times calls with a wall clock. JAX's GPU memory comes from its own pool, which
`torch.cuda.max_memory_allocated` does not see.

Settings, and why:
  threads       XLA's CPU client runs its intra-op thread pool (Eigen) at a size fixed
                when the client is created: XLA reads PJRT_NPROC (then NPROC) at that
                moment, else it takes every CPU of the affinity mask. No XLA_FLAGS
                option sets it: --xla_cpu_multi_thread_eigen=false only makes some
                Eigen kernels single-threaded, and intra_op_parallelism_threads is no
                XLA flag (TensorFlow's). So the client is created at the first call that
                needs it with PJRT_NPROC = the count given to `set_num_threads` (when
                none was: PJRT_NPROC or NPROC from the environment if set, else
                torch.get_num_threads()), and PJRT_NPROC is put back as it was right
                after (child processes do not inherit it). A later `set_num_threads` to
                another count cannot be honoured in this process: the implementation is
                then unavailable on the CPU with the reason, and its calls raise
                ValueError (never a silent run at another count). `set_num_threads`
                itself does not raise: the harness sets every implementation's count in
                one loop, and torch's cases must still run at the new count.
  x64           `jax_enable_x64` on (process-wide, at the first import here), so float64
                is float64 and the CPU is checked against the float64 oracle like
                `torch`. It changes only JAX's default dtypes for values without one;
                every array here has an explicit dtype, so float32 stays float32.
  precision     lax.Precision.HIGHEST on every convolution: on CUDA XLA would otherwise
                run float32 convolutions in TF32, which the float32-exact gate (and
                torch, with TF32 off in the harness) does not allow. No effect on the CPU.
  GPU memory    XLA_PYTHON_CLIENT_PREALLOCATE=false (os.environ.setdefault, before JAX
                creates its GPU client): JAX would otherwise take 75% of the GPU's
                memory at start and starve torch in the same process. The pool grows on
                demand (up to XLA_PYTHON_CLIENT_MEM_FRACTION, default 75%).
  XLA flags     none set: XLA's default CPU and GPU passes (what a JAX user gets);
                XLA_FLAGS from the environment is used as is and recorded.
`runtime_info()` records all of it: versions, backends, the thread count and how it was
fixed, the flags, x64, the exchange.

JAX is imported lazily (the module imports without it: `unavailable_reason` then says
"jax is not installed"); `runtime_info()` before the first call imports nothing.
CUDA needs jax's CUDA plugin (pip install 'jax[cuda13]'); float32 only there. CUDA is
untested here (no GPU on the development machine).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import threading
import time
from typing import Any

import torch

from .base import Implementation, reason_once_per_device, thread_count
from .params import FlatGrads

_INSTALL = "pip install flatconv[peers]"
_CUDA_INSTALL = "pip install 'jax[cuda13]'"
# Modules of jax's CUDA PJRT plugin (jax-cuda13-pjrt, jax-cuda12-pjrt), looked up
# without importing them: asking JAX for its CUDA devices would create its clients, and
# the CPU client's thread count with them.
_CUDA_PLUGINS = ("jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12")
_THREAD_VARS = ("PJRT_NPROC", "NPROC")  # what XLA's DefaultThreadPoolSize() reads, in order
_EIGEN_THREAD_NAME = "tf_XLAEigen"  # the name of the CPU client's intra-op pool threads


def _import_jax():
    """jax, imported with the settings that must precede its clients."""
    # Before JAX creates its GPU client (read then): no preallocation of 75% of the GPU.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    if not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return jax


def _eigen_threads() -> int | None:
    """How many threads of XLA's CPU intra-op pool this process has (Linux), else None."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    count = 0
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                count += f.read().strip() == _EIGEN_THREAD_NAME
        except OSError:
            pass
    return count


def _env_count(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    try:
        return max(0, int(value)) if value else None
    except ValueError:
        return None


class _Client:
    """The process's JAX clients: created once, by the first call that needs one; the CPU
    client's thread count is fixed then."""

    lock = threading.RLock()
    threads: int | None = None  # the CPU client's intra-op pool size, once it exists
    how: str = ""
    created_by_us = False
    pjrt_nproc: str | None = None  # what PJRT_NPROC was while the client was created
    eigen_threads_seen: int | None = None

    @classmethod
    def ensure(cls, requested: int | None):
        jax = _import_jax()
        with cls.lock:
            if cls.threads is not None:
                return jax
            from jax._src import xla_bridge

            if xla_bridge.backends_are_initialized():
                # Someone in this process created JAX's clients before our first call:
                # XLA sized the pool from the environment of that moment, or the affinity mask.
                for var in _THREAD_VARS:
                    if _env_count(var) is not None:
                        cls.threads, cls.how = _env_count(var), f"created before flatconv's first call; {var} is set"
                        break
                else:
                    cls.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
                    cls.how = "created before flatconv's first call; no PJRT_NPROC/NPROC: the affinity mask's CPUs"
                cls.pjrt_nproc = os.environ.get("PJRT_NPROC")
            else:
                if requested is not None:
                    threads, how = requested, "set_num_threads"
                else:
                    found = next(((var, _env_count(var)) for var in _THREAD_VARS if _env_count(var) is not None), None)
                    if found is not None:
                        threads, how = found[1], f"{found[0]} from the environment (no set_num_threads)"
                    else:
                        threads, how = torch.get_num_threads(), "torch.get_num_threads() (no set_num_threads)"
                previous = os.environ.get("PJRT_NPROC")
                os.environ["PJRT_NPROC"] = str(threads)
                try:
                    jax.devices()  # creates every client (CPU, and CUDA where the plugin is)
                finally:
                    if previous is None:
                        os.environ.pop("PJRT_NPROC", None)
                    else:
                        os.environ["PJRT_NPROC"] = previous
                cls.threads, cls.how, cls.created_by_us, cls.pjrt_nproc = threads, how, True, str(threads)
            cls.eigen_threads_seen = _eigen_threads()
        return jax


class _Residuals(dict):
    """`saved.tensors` of jax: the VJP's residuals as torch tensors on JAX's buffers, and
    in `arrays` the same buffers as JAX arrays (with x's), for backward."""

    __slots__ = ("arrays",)


class _Entry:
    """One compiled executable and what its calls need."""

    __slots__ = ("fn", "where", "treedef", "specs")

    def __init__(self, fn, where=None, treedef=None, specs=None):
        self.fn, self.where, self.treedef, self.specs = fn, where, treedef, specs


def _layer(lax, x, params, p, precision, form: str):
    """The layer in JAX. form="conv": three lax.conv_general_dilated (the depthwise ones
    by feature_group_count); form="taps": the lateral stage as a contraction over
    channels and each depthwise stage as its k shifted multiply-adds, which XLA fuses into
    one loop (XLA's CPU backend has no fast grouped convolution: see the module docstring)."""
    lat, lb, vert, vb, hor, hb = params
    n, c = lat.shape
    k = vert.shape[1]
    if form == "conv":
        dn = ("NCHW", "OIHW", "NCHW")

        def conv(inp, w, padding, groups):
            return lax.conv_general_dilated(inp, w, (1, 1), padding, dimension_numbers=dn,
                                            feature_group_count=groups, precision=precision)

        t1 = conv(x, lat.reshape(n, c, 1, 1), ((0, 0), (0, 0)), 1) + lb[None, :, None, None]
        t2 = conv(t1, vert.reshape(n, 1, k, 1), ((p, p), (0, 0)), n) + vb[None, :, None, None]
        return conv(t2, hor.reshape(n, 1, 1, k), ((0, 0), (p, p)), n) + hb[None, :, None, None]
    # (N, C) x (B, C, H, W) -> (B, N, H, W)
    t1 = lax.dot_general(lat, x, (((1,), (1,)), ((), ())), precision=precision).transpose(1, 0, 2, 3)
    t1 = t1 + lb[None, :, None, None]
    t2 = _vertical_taps(t1, vert, vb, p)
    return _horizontal_taps(t2, hor, hb, p)


def _taps(t, w, b, p, axis):
    """b + sum_i w[:, i] * t shifted by i along `axis` (2: H, 3: W), t zero-padded by p."""
    from jax import lax

    k = w.shape[1]
    pads = [(0, 0, 0)] * 4
    pads[axis] = (p, p, 0)
    t = lax.pad(t, t.dtype.type(0), pads)
    out = t.shape[axis] - k + 1

    def tap(i):
        return lax.slice_in_dim(t, i, i + out, axis=axis)

    return b[None, :, None, None] + sum(w[None, :, i, None, None] * tap(i) for i in range(k))


def _checkpointed(fn):
    # jax.checkpoint: the VJP keeps the stage's input (t1, t2) and recomputes its k shifted
    # slices in backward (free: they are views XLA fuses into the backward loops); without
    # it the VJP would keep every slice, k copies of the stage's input.
    import jax

    return jax.checkpoint(fn, static_argnums=(3,))


def _vertical_taps(t1, vert, vb, p):
    return _checkpointed(lambda t, w, b, p: _taps(t, w, b, p, 2))(t1, vert, vb, p)


def _horizontal_taps(t2, hor, hb, p):
    return _checkpointed(lambda t, w, b, p: _taps(t, w, b, p, 3))(t2, hor, hb, p)


class Jax(Implementation):
    name = "jax"
    role = "peer"
    devices = ("cpu", "cuda")
    dtypes = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float32,)}
    description = ("the three stages in JAX, jax.jit compiled per shape by XLA (CPU: a contraction and shifted "
                   "multiply-adds; CUDA: lax.conv_general_dilated); training by jax.vjp, the residuals kept for a "
                   "jitted backward")
    summary = ("JAX compiled by XLA (`jax.jit`): on the CPU a contraction and shifted multiply-adds (XLA's grouped "
               "convolution is slow there), on CUDA `lax.conv_general_dilated`; backward by `jax.vjp` on the kept "
               "residuals (CUDA with jax's CUDA plugin)")
    extras = ("peers",)
    compiles = "graphs"

    # The stages' form per device (see _layer): the faster one measured on the CPU; on CUDA
    # the convolutions, which XLA gives to cuDNN (not measured yet: no GPU at hand).
    FORMS = {"cpu": "taps", "cuda": "conv"}

    def __init__(self, *, form: str | None = None):
        if form not in (None, "conv", "taps"):
            raise ValueError(f"form: expected 'conv', 'taps' or None (per device), got {form!r}")
        self.form = form
        self._threads: int | None = None
        self._compiled: dict[tuple, _Entry] = {}
        self._compilations = 0
        self._seconds = 0.0
        self._copies = 0
        self._lock = threading.Lock()

    # ---- availability and runtime ----------------------------------------------------
    @reason_once_per_device
    def _dependency_reason(self, device_type):
        try:
            jax = _import_jax()
        except ImportError:
            return f"jax is not installed ({_INSTALL})"
        except Exception as e:  # noqa: BLE001 - a broken install (jax and jaxlib apart) is a reason, not a crash
            return f"jax failed to import: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if device_type == "cuda" and not any(_find_spec(m) for m in _CUDA_PLUGINS):
            return f"jax {jax.__version__} has no CUDA plugin ({_CUDA_INSTALL})"
        return None

    def _platform_reason(self, device_type):
        reason = super()._platform_reason(device_type)
        if reason is None and device_type == "cpu":
            reason = self._thread_mismatch()
        return reason

    def _thread_mismatch(self) -> str | None:
        fixed = _Client.threads
        if self._threads is None or fixed is None or self._threads == fixed:
            return None
        return (f"jax's CPU client runs {fixed} threads, fixed when it was created ({_Client.how}); "
                f"set_num_threads({self._threads}) cannot change it in this process: run {self._threads} threads "
                f"in a fresh process (or set_num_threads({fixed}))")

    def set_num_threads(self, threads):
        """The CPU client's thread count: honoured when the client is created (the first
        call that needs it); after that, another count makes the CPU unavailable (and
        the calls raise ValueError) until this count is asked for again."""
        self._threads = thread_count(threads)

    def threads(self) -> int | None:
        """The thread count of the CPU client, or the count it will get, or None when
        unknown yet (no client, no set_num_threads)."""
        return _Client.threads if _Client.threads is not None else self._threads

    def runtime_info(self):
        info: dict[str, Any] = {"jax": _version("jax"), "jaxlib": _version("jaxlib")}
        if info["jax"] is None:
            return {"available": False, "reason": f"jax is not installed ({_INSTALL})"}
        info.update({
            "threads": self.threads(),
            "threads_requested": self._threads,
            "cpu_client": (
                {"created": True, "threads": _Client.threads, "threads_from": _Client.how,
                 "created_by": "flatconv" if _Client.created_by_us else "another caller in this process",
                 "PJRT_NPROC": _Client.pjrt_nproc,
                 "PJRT_NPROC_after": "restored as it was (read by XLA only at client creation)",
                 "xla_eigen_threads_seen": _Client.eigen_threads_seen}
                if _Client.threads is not None else
                {"created": False, "threads_from": "set_num_threads" if self._threads is not None else
                 "PJRT_NPROC/NPROC if set, else torch.get_num_threads(), at creation"}),
            "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
            "precision": "lax.Precision.HIGHEST (no TF32 on CUDA)",
            "stages": {dev: {"conv": "three lax.conv_general_dilated (depthwise: feature_group_count=N)",
                             "taps": "lateral lax.dot_general; each depthwise stage k shifted multiply-adds (fused)"}
                       [self.form_on(dev)] for dev in self.devices},
            "exchange": ("DLPack both ways, no copy (jax.dlpack.from_dlpack of the input, output gradient and "
                         "parameters; torch.from_dlpack of the outputs and gradients); XLA copies an input "
                         "whose data is not aligned as it needs (input_copies); on CUDA torch's current "
                         "stream is synchronized first"),
            "input_copies": self._copies,
            "compile": "jax.jit(f).lower(specs).compile() once per (direction, device, dtype, shape, padding, threads)",
            "backward": "jitted vjp_fn on the residuals of the jitted jax.vjp forward (no recomputation)",
            "compiled_functions": len(self._compiled),
        })
        jax = sys.modules.get("jax")
        if jax is not None:  # no import (and no client) for a record made before any call
            info["x64"] = bool(jax.config.jax_enable_x64)
            info["persistent_compilation_cache"] = jax.config.jax_compilation_cache_dir or None
            if _Client.threads is not None:
                info["backends"] = {}
                for platform in ("cpu", "cuda"):
                    try:
                        devices = jax.devices(platform)
                    except RuntimeError:
                        continue
                    info["backends"][platform] = {"platform_version": devices[0].client.platform_version,
                                                  "devices": [str(d) for d in devices]}
        return info

    def form_on(self, device_type: str) -> str:
        """The form of the stages on this device: "conv" or "taps" (_layer)."""
        return self.form or self.FORMS[device_type]

    def compile_stats(self):
        """{"compilations": one per new (direction, device, dtype, input shape, N, C, k,
        padding, threads): forward, forward_train and backward each compile at their first
        call for a key; "compile_seconds": their tracing, lowering and XLA compile time}."""
        return {"compilations": self._compilations, "compile_seconds": self._seconds}

    # ---- exchange ------------------------------------------------------------------------
    def _jax(self):
        return _Client.ensure(self._threads)

    def _device(self, jax, device: torch.device):
        if device.type == "cpu":
            return jax.devices("cpu")[0]
        index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            found = [d for d in jax.devices("cuda") if d.local_hardware_id == index]
        except RuntimeError as e:
            raise RuntimeError(f"jax has no CUDA backend in this process ({str(e).splitlines()[0]})") from None
        if not found:
            raise RuntimeError(f"jax sees no CUDA device with index {index} (torch's {device})")
        return found[0]

    def _to_jax(self, jax, t: torch.Tensor):
        if t.dtype == torch.float64 and not jax.config.jax_enable_x64:
            raise RuntimeError("jax_enable_x64 was turned off after jax was set up: float64 would become float32")
        a = jax.dlpack.from_dlpack(t.detach())
        if t.numel() and a.unsafe_buffer_pointer() != t.data_ptr():
            self._copies += 1
        return a

    @staticmethod
    def _sync(device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()

    # ---- compiled functions --------------------------------------------------------------
    def _key(self, direction, x, prm, p):
        threads = _Client.threads if x.device.type == "cpu" else None
        return (direction, x.device, x.dtype, tuple(x.shape), prm.out_channels, prm.in_channels, prm.kernel_size, p,
                threads)

    def _entry(self, direction, x, prm, p) -> _Entry:
        key = self._key(direction, x, prm, p)
        entry = self._compiled.get(key)
        if entry is None:
            with self._lock:
                entry = self._compiled.get(key)
                if entry is None:
                    start = time.perf_counter()
                    entry = self._compile(direction, x, prm, p)
                    self._compiled[key] = entry
                    self._compilations += 1
                    self._seconds += time.perf_counter() - start
        return entry

    def _compile(self, direction, x, prm, p) -> _Entry:
        jax = self._jax()
        from jax import lax

        device = self._device(jax, x.device)
        sharding = jax.sharding.SingleDeviceSharding(device)
        dtype = {torch.float32: jax.numpy.float32, torch.float64: jax.numpy.float64}[x.dtype]

        def spec(shape):
            return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)

        x_spec = spec(x.shape)
        p_specs = tuple(spec(t.shape) for t in prm.tensors().values())
        precision = lax.Precision.HIGHEST

        form = self.form_on(x.device.type)

        def layer(x, params):
            return _layer(lax, x, params, p, precision, form)

        if direction == "forward":
            return _Entry(jax.jit(layer).lower(x_spec, p_specs).compile())
        if direction == "train":
            found: dict[str, Any] = {}

            def train(x, params):
                y, vjp_fn = jax.vjp(layer, x, params)
                leaves, treedef = jax.tree_util.tree_flatten(vjp_fn)
                inputs = (x, *params)
                where, residuals = [], []
                for leaf in leaves:
                    # A residual that is an input is not returned (XLA would copy it):
                    # backward puts the input back in its place.
                    i = next((i for i, a in enumerate(inputs) if leaf is a), None)
                    if i is None:
                        where.append(("residual", len(residuals)))
                        residuals.append(leaf)
                    else:
                        where.append(("input", i))
                found.update(where=tuple(where), treedef=treedef)
                return y, residuals

            lowered = jax.jit(train).lower(x_spec, p_specs)
            residual_specs = tuple(spec(s.shape) for s in lowered.out_info[1])
            inputs = (x_spec, *p_specs)
            specs = tuple(inputs[i] if kind == "input" else residual_specs[i] for kind, i in found["where"])
            return _Entry(lowered.compile(), found["where"], found["treedef"], specs)
        if direction == "backward":
            train = self._entry("train", x, prm, p)
            treedef = train.treedef
            oh, ow = x.shape[2] + 2 * p - prm.kernel_size + 1, x.shape[3] + 2 * p - prm.kernel_size + 1

            def backward(leaves, gy):
                return jax.tree_util.tree_unflatten(treedef, leaves)(gy)

            g_spec = spec((x.shape[0], prm.out_channels, oh, ow))
            return _Entry(jax.jit(backward).lower(list(train.specs), g_spec).compile(), train.where, treedef)
        raise ValueError(f"direction: {direction!r}")

    # ---- the contract --------------------------------------------------------------------
    def _prepare(self, params):
        jax = self._jax()
        self._sync(params.device)
        return {"params": tuple(self._to_jax(jax, t) for t in params.tensors().values())}

    def _forward(self, x, prepared, p):
        entry = self._entry("forward", x, prepared.params, p)
        jax = sys.modules["jax"]
        self._sync(x.device)
        y = entry.fn(self._to_jax(jax, x), prepared.extra["params"])
        y.block_until_ready()
        return torch.from_dlpack(y)

    def _forward_train(self, x, prepared, p):
        entry = self._entry("train", x, prepared.params, p)
        jax = sys.modules["jax"]
        self._sync(x.device)
        jx = self._to_jax(jax, x)
        y, residuals = entry.fn(jx, prepared.extra["params"])
        jax.block_until_ready((y, residuals))
        tensors = _Residuals((f"residual_{i}", torch.from_dlpack(r)) for i, r in enumerate(residuals))
        tensors.arrays = (jx, tuple(residuals))
        return torch.from_dlpack(y), tensors

    def _backward(self, saved, gy):
        reason = self._thread_mismatch() if saved.x.device.type == "cpu" else None
        if reason is not None:
            raise ValueError(f"saved: {self.name} is unavailable on cpu: {reason}")
        entry = self._entry("backward", saved.x, saved.prepared.params, saved.padding)
        jax = sys.modules["jax"]
        self._sync(gy.device)
        arrays = getattr(saved.tensors, "arrays", None)
        if arrays is None:  # a plain dict of the residuals (copied, rebuilt): back by DLPack
            n = sum(kind == "residual" for kind, _ in entry.where)
            arrays = (self._to_jax(jax, saved.x), tuple(self._to_jax(jax, saved.tensors[f"residual_{i}"])
                                                        for i in range(n)))
        jx, residuals = arrays
        inputs = (jx, *saved.prepared.extra["params"])
        leaves = [inputs[i] if kind == "input" else residuals[i] for kind, i in entry.where]
        g_x, g_params = entry.fn(leaves, self._to_jax(jax, gy))
        jax.block_until_ready((g_x, g_params))
        return FlatGrads(torch.from_dlpack(g_x), *(torch.from_dlpack(g) for g in g_params))


def _find_spec(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


IMPLEMENTATIONS = [Jax()]
