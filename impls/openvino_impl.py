"""`openvino`: the composed layer run by OpenVINO's CPU plugin (inference).

The model is the ONNX export `onnxruntime` runs (impls/_onnx_export.py: the three
`F.conv2d` stages, weights as initializers, every dimension static), read by
OpenVINO's ONNX frontend (`Core.read_model` on the bytes) and compiled for the CPU once
per parameter set and input shape, padding and thread count. That path is the cheapest:
export and read take 0.02-0.1 s a model on the 2-core development VM, where
`ov.convert_model` of the same torch module takes 1.1-1.8 s (it traces the module with
TorchScript and converts through the PyTorch frontend); the compiled graphs are the
same, three convolutions with their bias adds fused (the ONNX frontend's bias-shape
subgraph is constant-folded away).

Compiled models are cached like `onnxruntime`'s sessions: per parameter set (in
`prepared.extra`, and shared by a later `prepare` of equal parameters, compared by
value) and per (shape, padding, threads). Each has one `InferRequest`, run with the
synchronous `infer()`. The CPU plugin is configured as for a latency deployment, every
property set explicitly (the defaults depend on the CPU and the version) and read back
from the compiled model into `runtime_info()`:

- INFERENCE_PRECISION_HINT = f32. On a CPU with AVX-512-BF16 or AMX the plugin's
  default is bf16 (it is so on the development VM's Zen 4: the CPU device reports
  bfloat16 until told otherwise), which would silently time a bfloat16 layer beside
  float32 ones and miss the oracle's float32 tolerance.
- INFERENCE_NUM_THREADS = the count given to `set_num_threads` (torch.get_num_threads()
  when none was), as every runtime of a case gets the same count (bench/threads.py).
  OpenVINO's default is every core of the machine.
- NUM_STREAMS = 1 and PERFORMANCE_HINT = LATENCY: one request at a time, all threads on
  it (the THROUGHPUT hint would split the cores into streams, each running its own
  request on fewer threads: the wrong trade for a per-call latency).
- ENABLE_CPU_PINNING = False. The LATENCY hint pins the inference threads to cores by
  default on Linux; no other peer pins (torch's OpenMP and ONNX Runtime leave placement
  to the OS), pinning to cores that another process is using stalls a pinned thread
  where an unpinned one would move (this VM is shared). Measured on the development VM it
  made no difference to the timings (within noise at 2 threads on 2 cores), so the fair
  choice costs OpenVINO nothing here.
- SCHEDULING_CORE_TYPE and ENABLE_HYPER_THREADING are left at their defaults and only
  recorded: the first matters only on hybrid (P-core/E-core) CPUs; the second only
  chooses which logical processors the requested threads go to.
- EXECUTION_MODE_HINT stays PERFORMANCE (the default): with the precision given
  explicitly it changes nothing else on the CPU (denormals optimization stays off).

Input and output are torch's memory: each call wraps the input's storage in an
`ov.Tensor` that shares it (a numpy view, `shared_memory=True`) and a fresh torch output
tensor likewise, and sets both on the request (`set_input_tensor`,
`set_output_tensor`), so the plugin reads x and writes y in place; no copy is made on
the Python side. What remains is inside the plugin: it runs the convolutions channels-
last, so its exec graph (`compiled.get_runtime_model()`) begins with a Reorder of the
NCHW input into an NHWC buffer and ends with one from the last convolution's NHWC
buffer into y (NCHW): two layout transposes of the layer's input and output, which the
plugin chose over NCHW kernels and which count in its time. The three convolutions
themselves are oneDNN's brgconv_avx512_1x1_f32 and brgconv_avx512_dw_f32 (on the
development VM's AVX-512 CPU), the bias adds fused into them. Those two reorders are
where OpenVINO loses to ONNX Runtime on the larger images: at batch 8, 2 threads,
C = N = 64 at 32 x 32, the plugin's profiling counters gave 0.25 ms for the input
reorder and 1.2 ms for the output one (a generic reorder_f32, not a JIT kernel) beside
0.6 ms for the three convolutions; the same layer compiled for NHWC tensors
(PrePostProcessor layouts) ran in about a third of the time. Going through
OpenVINO's own request tensors instead (a copy in, a clone out) was 1.4-2.2x slower
per call than sharing torch's memory on the benchmark layers.

OpenVINO's CPU plugin has no float64 inference precision (it would run a float64 model
in float32): float32 only. CPU only: its GPU plugin drives Intel GPUs, not CUDA devices. Inference
only; the base class says so for backward and train. OpenVINO's threads are TBB's, so a
process with torch holds two pools (OpenMP and TBB); TBB's workers sleep shortly after
a call (1.2 ms of CPU time in the 50 ms after one, measured; bench/workers.py waits for
a process to go quiet between cases). Loading and running OpenVINO in the process did
not slow torch's own layer there.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from . import _onnx_export
from .base import Implementation, RecentParams, reason_once_per_device, thread_count

_INSTALL = "pip install flatconv[peers]"
DEVICE = "CPU"
MODEL_SOURCE = f"ONNX: {_onnx_export.DESCRIPTION}, read by OpenVINO's ONNX frontend"
IO_METHOD = ("set_input_tensor / set_output_tensor with ov.Tensor(numpy view, shared_memory=True) on the input "
             "and a fresh torch output: no copy outside the plugin")


def _import_openvino():
    """openvino, imported with its usage telemetry off. `import openvino` imports its model
    converter (openvino.tools.ovc), which sends a usage event through a forked process
    unless the user opted out (or CI=true): no benchmark may fork a multithreaded process
    or call the network between cases, and the suite's users did not ask for it. With
    openvino_telemetry unimportable while openvino loads, OpenVINO takes its own stub
    (openvino.tools.ovc.telemetry_stub) instead; nothing else changes."""
    if "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # import openvino_telemetry raises ImportError
        try:
            import openvino  # noqa: F401
        finally:
            del sys.modules["openvino_telemetry"]
    import openvino as ov

    return ov


def _config(ov, threads: int) -> dict:
    """The properties every compiled model gets (the module docstring says why)."""
    import openvino.properties as props
    import openvino.properties.hint as hint

    return {
        hint.inference_precision: ov.Type.f32,
        props.inference_num_threads: threads,
        props.num_streams: 1,
        hint.performance_mode: hint.PerformanceMode.LATENCY,
        hint.enable_cpu_pinning: False,
    }


def read_back(compiled) -> dict[str, Any]:
    """The properties a compiled model reports, as plain values."""
    import openvino.properties as props
    import openvino.properties.hint as hint

    def get(prop):
        value = compiled.get_property(prop)
        if isinstance(value, (bool, int, float, str)):
            return value
        name = getattr(value, "get_type_name", None)  # an element type: "f32", "bf16"
        return name() if name is not None else getattr(value, "name", str(value))

    return {
        "INFERENCE_PRECISION_HINT": get(hint.inference_precision),
        "INFERENCE_NUM_THREADS": get(props.inference_num_threads),
        "NUM_STREAMS": int(str(compiled.get_property(props.num_streams))),
        "PERFORMANCE_HINT": get(hint.performance_mode),
        "ENABLE_CPU_PINNING": get(hint.enable_cpu_pinning),
        "SCHEDULING_CORE_TYPE": get(hint.scheduling_core_type),
        "ENABLE_HYPER_THREADING": get(hint.enable_hyper_threading),
        "EXECUTION_MODE_HINT": get(hint.execution_mode),
        "EXECUTION_DEVICES": list(compiled.get_property(props.execution_devices)),
    }


class _Compiled:
    """One compiled model and its infer request, for one input shape."""

    def __init__(self, ov, core, model: bytes, threads: int, out_shape: tuple[int, ...]):
        self.ov = ov
        self.out_shape = out_shape
        self.compiled = core.compile_model(core.read_model(model), DEVICE, _config(ov, threads))
        self.request = self.compiled.create_infer_request()

    def run(self, x: torch.Tensor) -> torch.Tensor:
        ov = self.ov
        y = torch.empty(self.out_shape, dtype=x.dtype)
        self.request.set_input_tensor(ov.Tensor(x.detach().numpy(), shared_memory=True))
        self.request.set_output_tensor(ov.Tensor(y.numpy(), shared_memory=True))
        self.request.infer()
        return y


class OpenVino(Implementation):
    name = "openvino"
    role = "peer"
    devices = ("cpu",)
    dtypes = {"cpu": (torch.float32,)}
    directions = ("forward",)
    description = ("the three convolutions exported to ONNX (static shapes, weights as constants) and run by "
                   "OpenVINO's CPU plugin (f32, latency hint, one stream), reading and writing torch's memory; "
                   "inference only")
    summary = "the three convolutions exported to ONNX and run by OpenVINO's CPU plugin (f32, latency); inference only"
    extras = ("peers",)
    compiles = "graphs"

    def __init__(self):
        self._threads: int | None = None
        self._compilations = 0
        self._seconds = 0.0
        self._recent = RecentParams()  # compiled models per parameter set: FlattenedConv2d prepares on every call
        self._core = None
        self._last: _Compiled | None = None

    # ---- availability and runtime ----------------------------------------------------
    @reason_once_per_device
    def _dependency_reason(self, device_type):
        try:
            ov = _import_openvino()
        except ImportError:
            return f"openvino is not installed ({_INSTALL})"
        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
        except ImportError:
            return f"onnx is not installed; torch.onnx.export needs it ({_INSTALL})"
        try:
            devices = ov.Core().available_devices
        except Exception as e:  # noqa: BLE001 - a broken install is a reason, not a crash
            return f"openvino {ov.__version__} failed to start: {type(e).__name__}: {e}".splitlines()[0]
        if DEVICE not in devices:
            return f"openvino {ov.__version__} has no CPU device (devices: {', '.join(devices) or 'none'})"
        return None

    def _ov(self):
        ov = _import_openvino()
        if self._core is None:
            self._core = ov.Core()
        return ov, self._core

    def threads(self) -> int:
        """The INFERENCE_NUM_THREADS new compiled models get."""
        return self._threads if self._threads is not None else torch.get_num_threads()

    def runtime_info(self):
        reason = self._dependency_reason("cpu")
        if reason is not None:
            return {"available": False, "reason": reason}
        ov, core = self._ov()
        import openvino.properties as props

        return {
            "available": True,
            "openvino": ov.__version__,
            "device": DEVICE,
            "device_name": core.get_property(DEVICE, props.device.full_name),
            "requested": {
                "INFERENCE_PRECISION_HINT": "f32",
                "INFERENCE_NUM_THREADS": self.threads(),
                "threads_from": "set_num_threads" if self._threads is not None else "torch.get_num_threads()",
                "NUM_STREAMS": 1,
                "PERFORMANCE_HINT": "LATENCY",
                "ENABLE_CPU_PINNING": False,
            },
            # What the latest compiled model reports (None before the first compilation).
            "compiled": read_back(self._last.compiled) if self._last is not None else None,
            "model_source": MODEL_SOURCE,
            "io": IO_METHOD,
            "threads": self.threads(),
        }

    def set_num_threads(self, threads):
        self._threads = thread_count(threads)

    def compile_stats(self):
        """{"compilations": one per new (parameter set, shape, padding, threads),
        "compile_seconds": the wall time of their ONNX export, model read, compilation and
        first inference}."""
        return {"compilations": self._compilations, "compile_seconds": self._seconds}

    # ---- the contract ----------------------------------------------------------------
    def _prepare(self, params):
        return {"models": self._recent.state(params)}

    def _compiled(self, x, prepared, p) -> _Compiled:
        threads = self.threads()
        key = (tuple(x.shape), p, threads)
        models = prepared.extra["models"]
        compiled = models.get(key)
        if compiled is None:
            start = time.perf_counter()
            ov, core = self._ov()
            prm = prepared.params
            b, _, h, w = x.shape
            k = prm.kernel_size
            out_shape = (b, prm.out_channels, h + 2 * p - k + 1, w + 2 * p - k + 1)
            compiled = _Compiled(ov, core, _onnx_export.export(prm, tuple(x.shape), p), threads, out_shape)
            compiled.run(x)  # the plugin's lazy set-up (memory, primitive creation)
            models[key] = compiled
            self._compilations += 1
            self._seconds += time.perf_counter() - start
        self._last = compiled
        return compiled

    def _forward(self, x, prepared, p):
        return self._compiled(x, prepared, p).run(x)


IMPLEMENTATIONS = [OpenVino()]
