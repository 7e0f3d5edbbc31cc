"""`onnxruntime`: the composed layer exported to ONNX and run by ONNX Runtime (inference).

The three `F.conv2d` stages of `torch` (impls/composed.py) are exported once per
parameter set and input shape with `torch.onnx.export(..., dynamo=False)` (the
TorchScript exporter: 0.2 s and quiet, where the dynamo exporter takes about 4 s and
logs), the weights as initializers and every dimension static, so ONNX Runtime can
optimize for the shape, as a deployment would. The model is three Conv nodes.

Sessions are cached per parameter set (in `prepared.extra`, and shared by a later
`prepare` of equal parameters) and per (shape, padding, device, threads):
intra-op threads = the count given to `set_num_threads` (torch.get_num_threads() when
none was), one inter-op thread, sequential execution, and thread spinning off for both
pools. With ONNX Runtime's default spinning its idle workers keep spinning on every core
after a run, and slowed the next implementation timed enough to reverse a ranking.

Each call binds the input tensor's memory and a fresh torch output tensor to the session
(IO binding on `data_ptr()`), so ONNX Runtime reads and writes torch's memory directly:
no copy on the way in or out, on the CPU or on CUDA. On CUDA the session refuses to
fall back to the CPU for any node (it fails to build instead of copying data between
devices) and runs on torch's current stream; on torch's default (null) stream, which
ONNX Runtime does not accept as a compute stream, each run first waits for that stream.
CUDA is untested here (no GPU on the development machine).

ONNX Runtime's CPU Conv has no float64 kernel: float32 only. Inference only; the base
class says so for backward and train.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from .base import Implementation, reason_once_per_device, thread_count

OPSET = 17
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_INSTALL = "pip install flatconv[peers]"


class _Composed(torch.nn.Module):
    """The three stages of `torch`, for the exporter (weights become initializers)."""

    def __init__(self, params, padding):
        super().__init__()
        n, c, k = params.out_channels, params.in_channels, params.kernel_size
        cpu = {name: t.detach().cpu() for name, t in params.tensors().items()}
        self.w_lat = torch.nn.Parameter(cpu["lateral"].reshape(n, c, 1, 1), requires_grad=False)
        self.w_vert = torch.nn.Parameter(cpu["vertical"].reshape(n, 1, k, 1), requires_grad=False)
        self.w_hor = torch.nn.Parameter(cpu["horizontal"].reshape(n, 1, 1, k), requires_grad=False)
        self.b_lat = torch.nn.Parameter(cpu["lateral_bias"], requires_grad=False)
        self.b_vert = torch.nn.Parameter(cpu["vertical_bias"], requires_grad=False)
        self.b_hor = torch.nn.Parameter(cpu["horizontal_bias"], requires_grad=False)
        self.n, self.p = n, padding

    def forward(self, x):
        t1 = F.conv2d(x, self.w_lat, self.b_lat)
        t2 = F.conv2d(t1, self.w_vert, self.b_vert, padding=(self.p, 0), groups=self.n)
        return F.conv2d(t2, self.w_hor, self.b_hor, padding=(0, self.p), groups=self.n)


def _export(params, shape, padding) -> bytes:
    """The ONNX model (serialized) of the layer with these parameters, for inputs of
    exactly `shape`."""
    module = _Composed(params, padding).eval()
    buf = io.BytesIO()
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (torch.zeros(shape, dtype=params.dtype),), buf, dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=OPSET, do_constant_folding=True)
    return buf.getvalue()


def _equal(a, b) -> bool:
    ta, tb = a.tensors(), b.tensors()
    return all(x.shape == tb[k].shape and x.dtype == tb[k].dtype and x.device == tb[k].device and torch.equal(x, tb[k])
               for k, x in ta.items())


class _Session:
    """One InferenceSession and its IO binding, for one input shape on one device."""

    def __init__(self, ort, model: bytes, device: torch.device, threads: int, out_shape: tuple[int, ...]):
        self.out_shape = out_shape
        options = OnnxRuntime.session_options(ort, threads)
        self.sync_before_run = False
        if device.type == "cuda":
            # Every node on the GPU or no session: nothing is copied between devices
            # behind our back.
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            cuda_options = {"device_id": str(device.index)}
            stream = torch.cuda.current_stream(device).cuda_stream
            if stream:
                # ONNX Runtime runs on torch's stream, after the kernels that wrote x.
                cuda_options["user_compute_stream"] = str(stream)
            else:
                # torch's default stream is the null stream, which ONNX Runtime refuses as a
                # compute stream: it runs on its own, so wait for torch's work first.
                self.sync_before_run = True
            provider = ("CUDAExecutionProvider", cuda_options)
        else:
            provider = "CPUExecutionProvider"
        self.session = ort.InferenceSession(model, options, providers=[provider])
        self.binding = self.session.io_binding()
        self.ort_device = "cuda" if device.type == "cuda" else "cpu"
        self.device_id = device.index or 0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np

        y = torch.empty(self.out_shape, dtype=x.dtype, device=x.device)
        b = self.binding
        b.bind_input("x", self.ort_device, self.device_id, np.float32, tuple(x.shape), x.data_ptr())
        b.bind_output("y", self.ort_device, self.device_id, np.float32, self.out_shape, y.data_ptr())
        if self.sync_before_run:
            torch.cuda.current_stream(x.device).synchronize()
        # Run returns when the output is written (ONNX Runtime synchronizes its stream at
        # the end of a run unless told not to).
        self.session.run_with_iobinding(b)
        return y


class OnnxRuntime(Implementation):
    name = "onnxruntime"
    role = "peer"
    devices = ("cpu", "cuda")
    dtypes = {"cpu": (torch.float32,), "cuda": (torch.float32,)}
    directions = ("forward",)
    description = ("the three convolutions exported to ONNX (static shapes, weights as initializers) and run by "
                   "ONNX Runtime, IO-bound to torch's memory; inference only")
    summary = ("the three convolutions exported to ONNX and run by ONNX Runtime; inference only (CUDA with "
               "onnxruntime-gpu)")
    extras = ("peers",)
    compiles = "graphs"

    def __init__(self):
        self._threads: int | None = None
        self._compilations = 0
        self._seconds = 0.0
        self._recent: list[tuple[Any, dict]] = []

    # ---- availability and runtime ----------------------------------------------------
    @reason_once_per_device
    def _dependency_reason(self, device_type):
        try:
            import onnxruntime as ort
        except ImportError:
            return f"onnxruntime is not installed ({_INSTALL})"
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
        except ImportError:
            return f"onnx is not installed; torch.onnx.export needs it ({_INSTALL})"
        if _PROVIDERS[device_type] not in ort.get_available_providers():
            hint = " (pip install onnxruntime-gpu)" if device_type == "cuda" else ""
            return f"onnxruntime {ort.__version__} has no {_PROVIDERS[device_type]}{hint}"
        return None

    @staticmethod
    def session_options(ort, threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: nothing in the benchmark output
        return options

    def threads(self) -> int:
        """The intra-op thread count new sessions get."""
        return self._threads if self._threads is not None else torch.get_num_threads()

    def runtime_info(self):
        if self._dependency_reason("cpu") is not None:
            return {"available": False, "reason": self._dependency_reason("cpu")}
        import onnx
        import onnxruntime as ort

        return {
            "available": True,
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "providers": {dev: p for dev, p in _PROVIDERS.items() if p in ort.get_available_providers()},
            "exporter": f"torch.onnx.export(dynamo=False), opset {OPSET}, static shapes, weights as initializers",
            "session_options": {
                "intra_op_num_threads": self.threads(),
                "threads_from": "set_num_threads" if self._threads is not None else "torch.get_num_threads()",
                "inter_op_num_threads": 1,
                "execution_mode": "ORT_SEQUENTIAL",
                "graph_optimization_level": "ORT_ENABLE_ALL",
                "session.intra_op.allow_spinning": "0",
                "session.inter_op.allow_spinning": "0",
                "cuda": ("session.disable_cpu_ep_fallback=1; user_compute_stream=torch's current stream "
                         "(on torch's default stream: ONNX Runtime's own, after a stream synchronize)"),
            },
            "io": "IO binding on torch tensors' data_ptr (input and a fresh torch output)",
        }

    def set_num_threads(self, threads):
        threads = thread_count(threads)
        self._threads = threads

    def compile_stats(self):
        """{"compilations": one per new (parameter set, shape, padding, device, threads),
        "compile_seconds": the wall time of their ONNX export, session creation and first
        run (ONNX Runtime's lazy set-up, cuDNN's algorithm search on CUDA)}."""
        return {"compilations": self._compilations, "compile_seconds": self._seconds}

    # ---- the contract ----------------------------------------------------------------
    # Parameter sets seen lately, each with its sessions: FlattenedConv2d prepares on every
    # call, and a network's inference would otherwise export every layer on every forward.
    _RECENT = 16

    def _prepare(self, params):
        # A parameter set equal to a recent one (compared by value: cheap next to a layer,
        # and immune to storage reuse or in-place updates) shares its sessions.
        for i, (known, sessions) in enumerate(self._recent):
            if _equal(known, params):
                self._recent.insert(0, self._recent.pop(i))
                return {"sessions": sessions}
        sessions: dict = {}
        self._recent.insert(0, (params.replace(**{k: v.clone() for k, v in params.tensors().items()}), sessions))
        del self._recent[self._RECENT:]
        return {"sessions": sessions}

    def _session(self, x, prepared, p) -> _Session:
        threads = self.threads()
        stream = torch.cuda.current_stream(x.device).cuda_stream if x.device.type == "cuda" else None
        key = (tuple(x.shape), p, x.device, threads, stream)
        sessions = prepared.extra["sessions"]
        session = sessions.get(key)
        if session is None:
            import onnxruntime as ort

            start = time.perf_counter()
            prm = prepared.params
            b, _, h, w = x.shape
            k = prm.kernel_size
            out_shape = (b, prm.out_channels, h + 2 * p - k + 1, w + 2 * p - k + 1)
            session = _Session(ort, _export(prm, tuple(x.shape), p), x.device, threads, out_shape)
            session.run(x)  # ONNX Runtime's lazy set-up (and cuDNN's algorithm search on CUDA)
            sessions[key] = session
            self._compilations += 1
            self._seconds += time.perf_counter() - start
        return session

    def _forward(self, x, prepared, p):
        return self._session(x, prepared, p).run(x)


IMPLEMENTATIONS = [OnnxRuntime()]
