"""Shared test helpers: which (implementation, device) pairs can run here."""

import pytest

import impls


def impl_device_params(dtype=None, direction=None):
    """pytest params for every registered (implementation, device) pair, skipped with
    the implementation's own reason where it cannot run here (or cannot compute
    `direction`: an inference-only runtime has no backward)."""
    out = []
    for name in impls.names():
        impl = impls.get(name)
        for device in impl.devices:
            marks = []
            reason = impl.unavailable_reason(device, direction)
            if reason is not None:
                marks.append(pytest.mark.skip(reason=f"{name} on {device}: {reason}"))
            elif dtype is not None and not impl.supports_dtype(device, dtype):
                marks.append(pytest.mark.skip(reason=f"{name} on {device} does not support {dtype}"))
            if device == "cuda":
                marks.append(pytest.mark.gpu)
            out.append(pytest.param(name, device, id=f"{name}-{device}", marks=marks))
    return out
