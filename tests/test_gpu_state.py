"""The GPU-state readings (NVML) through a fake NVML module: clocks, throttling, energy
per call, and what the record says when a reading is missing. Runs without a GPU."""

import types

import pytest

from bench import gpu_state


class NVMLError(Exception):
    pass


def fake_nvml(readings, *, max_sm=1980, energy=True, fail_init=False):
    """A pynvml stand-in whose successive reads return successive `readings`
    (dicts of sm, mem, temp, power_mw, reasons, energy_mj)."""
    state = {"i": -1}

    def current():
        return readings[min(state["i"], len(readings) - 1)]

    def init():
        if fail_init:
            raise NVMLError("Driver Not Loaded")

    def clock(handle, which):
        if which == m.NVML_CLOCK_SM:
            state["i"] += 1  # the first reading of each read()
            return current()["sm"]
        return current()["mem"]

    def total_energy(handle):
        if not energy:
            raise NVMLError("Not Supported")
        return current()["energy_mj"]

    m = types.SimpleNamespace(
        NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1, NVML_TEMPERATURE_GPU=0,
        nvmlInit=init, nvmlDeviceGetHandleByIndex=lambda i: f"gpu{i}",
        nvmlDeviceGetMaxClockInfo=lambda h, which: max_sm,
        nvmlDeviceGetClockInfo=clock,
        nvmlDeviceGetTemperature=lambda h, sensor: current()["temp"],
        nvmlDeviceGetPowerUsage=lambda h: current()["power_mw"],
        nvmlDeviceGetCurrentClocksEventReasons=lambda h: current()["reasons"],
        nvmlDeviceGetTotalEnergyConsumption=total_energy,
    )
    return m


def reading(sm=1980, reasons=0, energy_mj=1_000_000, power_mw=400_000):
    return {"sm": sm, "mem": 2619, "temp": 45, "power_mw": power_mw, "reasons": reasons, "energy_mj": energy_mj}


def fields(readings, calls=100, **kw):
    nvml = gpu_state.Nvml(module=fake_nvml(readings, **kw))
    before, after = nvml.read(), nvml.read()
    return gpu_state.case_fields(nvml, before, after, calls), before


def test_a_steady_gpu_is_not_throttled_and_energy_is_per_call():
    out, before = fields([reading(energy_mj=1_000_000), reading(energy_mj=1_002_500)], calls=100)
    assert before == {"sm_mhz": 1980, "mem_mhz": 2619, "temperature_c": 45, "power_w": 400.0, "reasons": [],
                      "energy_mj": 1_000_000}
    assert out["throttled"] is False and out["sm_clock_mhz_min"] == 1980
    assert out["energy_mj"] == pytest.approx(25.0) and out["energy_note"] is None
    assert out["gpu_state"]["max_sm_mhz"] == 1980


def test_idle_and_application_clocks_are_not_throttling():
    out, _ = fields([reading(reasons=0x1), reading(reasons=0x2)])
    assert out["throttled"] is False
    assert out["gpu_state"]["before"]["reasons"] == ["gpu_idle"]


@pytest.mark.parametrize("after, why", [
    (reading(sm=1700), "SM clock below 90% of its maximum"),
    (reading(reasons=0x4), "software power cap"),
    (reading(reasons=0x40), "hardware thermal slowdown"),
])
def test_throttling_is_flagged(after, why):
    out, _ = fields([reading(), after])
    assert out["throttled"] is True, why


def test_missing_energy_counter_is_null_with_its_reason():
    out, _ = fields([reading(), reading()], energy=False)
    assert out["energy_mj"] is None and "total-energy counter" in out["energy_note"]
    out, _ = fields([reading(), reading()], calls=0)
    assert out["energy_mj"] is None and "no timed calls" in out["energy_note"]


def test_no_nvml_means_null_fields_with_the_reason():
    nvml = gpu_state.Nvml(module=fake_nvml([reading()], fail_init=True))
    assert not nvml.available and "Driver Not Loaded" in nvml.reason and nvml.read() == {}
    out = gpu_state.case_fields(nvml, {}, {}, 10)
    assert out["throttled"] is None and out["energy_mj"] is None and "Driver Not Loaded" in out["energy_note"]
    out = gpu_state.case_fields(None, {}, {}, 10)
    assert out["gpu_state"] is None and out["energy_note"] == "no NVML for this device"


def test_tf32_flags_are_what_torch_has_in_force():
    import torch

    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
        assert gpu_state.tf32_flags() == {"matmul": False, "cudnn": True}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
