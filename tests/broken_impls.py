"""Implementations that misbehave on purpose, for the harness's failure paths. Loaded into
the registry by the tests (and, through FLATCONV_IMPLS=broken_impls, by the child
processes of `python -m bench run --isolate`)."""

import os
import signal

from impls.composed import TorchComposed


class WrongAnswer(TorchComposed):
    name = "wrong_answer"

    def _forward_train(self, x, prepared, p):
        y, saved = super()._forward_train(x, prepared, p)
        return y * (1 + 1e-3), saved


class Crashes(TorchComposed):
    """Raises inside the kernel: a Python exception the sweep survives in-process."""

    name = "crashes"

    def _forward_train(self, x, prepared, p):
        raise RuntimeError("kernel exploded")


class Segfaults(TorchComposed):
    """Kills its own process with SIGSEGV once timing starts (after the gate passed), as
    a C kernel writing out of bounds would: only --isolate survives it."""

    name = "segfaults"
    calls = 0

    def _forward_train(self, x, prepared, p):
        Segfaults.calls += 1
        if Segfaults.calls > 2:  # the gate's forward and the first warm-up call pass
            os.kill(os.getpid(), signal.SIGSEGV)
        return super()._forward_train(x, prepared, p)


IMPLEMENTATIONS = [WrongAnswer(), Crashes(), Segfaults()]
