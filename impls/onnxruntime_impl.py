"""`onnxruntime`: the composed layer exported to ONNX and run by ONNX Runtime (inference).

The three `F.conv2d` stages of `torch` are exported once per parameter set and input
shape (impls/_onnx_export.py: the TorchScript exporter, weights as initializers, every
dimension static), so ONNX Runtime can optimize for the shape, as a deployment would.

Sessions are cached per parameter set (in `prepared.extra`, and shared by a later
`prepare` of equal parameters) and per (shape, padding, device, threads):
intra-op threads = the count given to `set_num_threads` (torch.get_num_threads() when
none was), one inter-op thread, sequential execution, ORT_ENABLE_ALL.

Thread spinning (`session.intra_op.allow_spinning`): with it on, ONNX Runtime's idle
workers spin for a while after each run, so back-to-back runs start sooner; with it off
they sleep. Neither wins everywhere (alone in fresh processes on the 2-core Zen 3 VM,
batch 8: on 0.54-0.65 ms against off 0.58-0.71 on (128,128,16,3), 0.89-0.91 against
0.72-0.82 on (64,64,32,3)), so an expert picks per layer, and so does this peer: with
`spinning="tuned"` (the registered one) each new session is built both ways, the two are
timed in alternation (TUNE_ROUNDS rounds of TUNE_RUNS runs each, the median of each
round's median) and the faster is kept, its choice and both figures in `runtime_info()`.
The spinning pool must not slow what is timed after it: the sweep's workers and the
in-process driver both wait for a process's threads to go quiet after a case
(bench/probes.py: `quiet`).

On the CPU each call hands ONNX Runtime a numpy view of the input (no copy) and takes
its output as a tensor that shares the array ONNX Runtime returned (torch.from_numpy).
On CUDA each call binds the input tensor's memory and a fresh torch output tensor to the
session (IO binding on `data_ptr()`), so ONNX Runtime reads and writes torch's memory
directly; `binding=True` does the same on the CPU. On CUDA the session refuses to
fall back to the CPU for any node (it fails to build instead of copying data between
devices) and runs on torch's current stream; on torch's default (null) stream, which
ONNX Runtime does not accept as a compute stream, each run first waits for that stream.
CUDA is untested here (no GPU on the development machine); an expert would also turn
the CUDA provider's `use_tf32` off for float32 to mean float32, and so does this one.

ONNX Runtime's CPU Conv has no float64 kernel: float32 only. Inference only; the base
class says so for backward and train.
"""

from __future__ import annotations

import statistics
import time

import torch

from . import _onnx_export
from .base import Implementation, RecentParams, reason_once_per_device, thread_count

_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_INSTALL = "pip install flatconv[peers]"


class _Session:
    """One InferenceSession for one input shape on one device, with its way of passing
    tensors (IO binding to torch's memory, or numpy views)."""

    def __init__(self, ort, model: bytes, device: torch.device, threads: int, out_shape: tuple[int, ...],
                 spinning: bool, binding: bool):
        self.out_shape, self.spinning = out_shape, spinning
        options = OnnxRuntime.session_options(ort, threads, spinning)
        self.sync_before_run = False
        if device.type == "cuda":
            # Every node on the GPU or no session: nothing is copied between devices
            # behind our back.
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            # float32 means float32: the CUDA provider may otherwise use TF32 in its convolutions
            cuda_options = {"device_id": str(device.index), "use_tf32": "0"}
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
        self.binding = self.session.io_binding() if binding or device.type == "cuda" else None
        self.ort_device = "cuda" if device.type == "cuda" else "cpu"
        self.device_id = device.index or 0

    def run(self, x: torch.Tensor) -> torch.Tensor:
        b = self.binding
        if b is None:  # the CPU: a numpy view in, ONNX Runtime's own output array out
            return torch.from_numpy(self.session.run(None, {"x": x.numpy()})[0])
        import numpy as np

        y = torch.empty(self.out_shape, dtype=x.dtype, device=x.device)
        b.bind_input("x", self.ort_device, self.device_id, np.float32, tuple(x.shape), x.data_ptr())
        b.bind_output("y", self.ort_device, self.device_id, np.float32, self.out_shape, y.data_ptr())
        if self.sync_before_run:
            torch.cuda.current_stream(x.device).synchronize()
        # Run returns when the output is written (ONNX Runtime synchronizes its stream at
        # the end of a run unless told not to).
        self.session.run_with_iobinding(b)
        return y


# Choosing the spinning policy of a new session (spinning="tuned"): rounds of runs of each
# policy in alternation, so that a slow stretch of the machine hits both.
TUNE_ROUNDS, TUNE_RUNS = 5, 3


def _tune(candidates: list[_Session], x) -> tuple[_Session, list[float]]:
    """The fastest of `candidates` on input x, and each one's figure (seconds: the median
    over rounds of a round's median run)."""
    rounds: list[list[float]] = [[] for _ in candidates]
    for _ in range(TUNE_ROUNDS):
        for i, s in enumerate(candidates):
            runs = []
            for _ in range(TUNE_RUNS):
                t = time.perf_counter()
                s.run(x)
                runs.append(time.perf_counter() - t)
            rounds[i].append(statistics.median(runs))
    figures = [statistics.median(r) for r in rounds]
    return candidates[figures.index(min(figures))], figures


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

    def __init__(self, *, spinning: bool | str = "tuned", binding: bool = False):
        # spinning: "tuned" (each session's faster policy, measured), True or False;
        # binding: IO binding on the CPU too (on CUDA always)
        if spinning not in ("tuned", True, False):
            raise ValueError(f"spinning: expected 'tuned', True or False, got {spinning!r}")
        self.spinning, self.binding = spinning, bool(binding)
        self._last_tuning: dict | None = None
        self._threads: int | None = None
        self._compilations = 0
        self._seconds = 0.0
        self._recent = RecentParams()  # sessions per parameter set: FlattenedConv2d prepares on every call

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
    def session_options(ort, threads: int, spinning: bool):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
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
            "exporter": _onnx_export.DESCRIPTION,
            "session_options": {
                "intra_op_num_threads": self.threads(),
                "threads_from": "set_num_threads" if self._threads is not None else "torch.get_num_threads()",
                "inter_op_num_threads": 1,
                "execution_mode": "ORT_SEQUENTIAL",
                "graph_optimization_level": "ORT_ENABLE_ALL",
                "allow_spinning": ("tuned per session: the faster of on and off" if self.spinning == "tuned"
                                   else "1" if self.spinning else "0"),
                "cuda": ("session.disable_cpu_ep_fallback=1; use_tf32=0; user_compute_stream=torch's current "
                         "stream (on torch's default stream: ONNX Runtime's own, after a stream synchronize)"),
            },
            # the newest session's choice: {"spinning": chosen, "seconds": {"on": s, "off": s}}
            "spinning_tuned": self._last_tuning,
            "io": {"cpu": ("IO binding on torch tensors' data_ptr (input and a fresh torch output)" if self.binding
                           else "a numpy view of the input in; ONNX Runtime's output array out, shared by torch"),
                   "cuda": "IO binding on torch tensors' data_ptr (input and a fresh torch output)"},
        }

    def set_num_threads(self, threads):
        threads = thread_count(threads)
        self._threads = threads

    def compile_stats(self):
        """{"compilations": one per new (parameter set, shape, padding, device, threads),
        "compile_seconds": the wall time of their ONNX export, session creation and first
        run (ONNX Runtime's lazy set-up, cuDNN's algorithm search on CUDA), and the timing
        that picks the spinning policy}."""
        return {"compilations": self._compilations, "compile_seconds": self._seconds}

    # ---- the contract ----------------------------------------------------------------
    def _prepare(self, params):
        return {"sessions": self._recent.state(params)}

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
            model = _onnx_export.export(prm, tuple(x.shape), p)
            policies = (True, False) if self.spinning == "tuned" else (self.spinning,)
            made = [_Session(ort, model, x.device, threads, out_shape, spin, self.binding) for spin in policies]
            for candidate in made:
                candidate.run(x)  # ONNX Runtime's lazy set-up (and cuDNN's algorithm search on CUDA)
            if len(made) > 1:
                session, figures = _tune(made, x)
                self._last_tuning = {"spinning": session.spinning,
                                     "seconds": {"on": round(figures[0], 7), "off": round(figures[1], 7)}}
            else:
                session = made[0]
            sessions[key] = session
            self._compilations += 1
            self._seconds += time.perf_counter() - start
        return session

    def _forward(self, x, prepared, p):
        return self._session(x, prepared, p).run(x)


IMPLEMENTATIONS = [OnnxRuntime()]
