"""What the asv benchmark files share: a case set up by the harness driver, its outcome in
asv's terms (a skipped case raises NotImplementedError, which asv records as skipped; a
failed one raises, which asv records as failed)."""

from __future__ import annotations

from . import driver, timing

# The timing behind a track_ benchmark's rate.
TRACK_RULE = timing.StopRule(min_time=0.2, max_time=0.2)


def set_up(case):
    bench, _, rec = driver.Driver().set_up(case)
    if rec is None:
        return bench
    if rec["status"] == "skipped":
        raise NotImplementedError(rec["reason"])
    raise RuntimeError(rec["reason"])
