"""The GPU's state around a case, through NVML (pynvml, from nvidia-ml-py).

Before and after each GPU case: SM and memory clocks, temperature, power, the clock
event (throttle) reasons and the total-energy counter. From those, per case:
`sm_clock_mhz_min`, `throttled` (the SM clock fell below 90% of its maximum, or NVML
gave a reason other than an idle GPU or the application clock setting), and `energy_mj`
per call (the counter's difference over the timed calls / calls; null with `energy_note`
where the counter is missing). `Nvml(module=...)` takes a fake module, so all of this is
tested without a GPU.
"""

from __future__ import annotations

# NVML's clock event reason bits (nvml.h, nvmlClocksEventReason*); "throttle" in older names.
REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# Not throttling: the GPU waiting for work, and clocks the administrator set on purpose.
BENIGN = {"gpu_idle", "applications_clocks_setting"}
SLOW_CLOCK = 0.90  # an SM clock below this fraction of its maximum counts as throttled


class Nvml:
    """One GPU's readings; `available` False (and `reason` why) when NVML cannot be used."""

    def __init__(self, index: int = 0, module=None):
        self.reason: str | None = None
        self._nvml = module
        self._handle = None
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            self.max_sm_mhz = self._nvml.nvmlDeviceGetMaxClockInfo(self._handle, self._nvml.NVML_CLOCK_SM)
        except ImportError:
            self.reason = "pynvml (nvidia-ml-py) is not installed"
        except Exception as e:  # noqa: BLE001 - NVMLError and friends: no GPU state, never a failure
            self.reason = f"NVML unavailable: {e}"

    @property
    def available(self) -> bool:
        return self.reason is None

    def _try(self, name: str, *args):
        try:
            return getattr(self._nvml, name)(self._handle, *args)
        except Exception:  # noqa: BLE001 - a reading this GPU or driver lacks
            return None

    def read(self) -> dict:
        """Clocks (MHz), temperature (C), power (W), reasons and the energy counter (mJ)."""
        if not self.available:
            return {}
        n = self._nvml
        sm = self._try("nvmlDeviceGetClockInfo", n.NVML_CLOCK_SM)
        power = self._try("nvmlDeviceGetPowerUsage")
        mask = self._try("nvmlDeviceGetCurrentClocksEventReasons")
        if mask is None:  # the name before NVML 12.2
            mask = self._try("nvmlDeviceGetCurrentClocksThrottleReasons")
        return {
            "sm_mhz": sm,
            "mem_mhz": self._try("nvmlDeviceGetClockInfo", n.NVML_CLOCK_MEM),
            "temperature_c": self._try("nvmlDeviceGetTemperature", getattr(n, "NVML_TEMPERATURE_GPU", 0)),
            "power_w": power / 1000 if power is not None else None,
            "reasons": None if mask is None else [name for bit, name in REASONS.items() if mask & bit],
            "energy_mj": self._try("nvmlDeviceGetTotalEnergyConsumption"),
        }


def case_fields(nvml: Nvml | None, before: dict, after: dict, calls: int | None) -> dict:
    """The record's GPU-state fields from the readings around a case's timed calls."""
    if nvml is None or not nvml.available:
        why = nvml.reason if nvml is not None else "no NVML for this device"
        return {"gpu_state": None, "sm_clock_mhz_min": None, "throttled": None, "energy_mj": None,
                "energy_note": why}
    clocks = [r["sm_mhz"] for r in (before, after) if r.get("sm_mhz") is not None]
    reasons = {name for r in (before, after) for name in (r.get("reasons") or [])}
    sm_min = min(clocks) if clocks else None
    throttled = bool(reasons - BENIGN) or (sm_min is not None and sm_min < SLOW_CLOCK * nvml.max_sm_mhz)
    e0, e1 = before.get("energy_mj"), after.get("energy_mj")
    if e0 is None or e1 is None:
        energy, note = None, "this GPU or driver has no total-energy counter (nvmlDeviceGetTotalEnergyConsumption)"
    elif not calls:
        energy, note = None, "no timed calls to divide the energy by"
    else:
        energy, note = (e1 - e0) / calls, None
    return {"gpu_state": {"before": before, "after": after, "max_sm_mhz": nvml.max_sm_mhz},
            "sm_clock_mhz_min": sm_min, "throttled": throttled, "energy_mj": energy, "energy_note": note}


def tf32_flags() -> dict:
    """The TF32 switches in force for cuBLAS matmuls and cuDNN convolutions."""
    import torch

    return {"matmul": bool(torch.backends.cuda.matmul.allow_tf32), "cudnn": bool(torch.backends.cudnn.allow_tf32)}
