"""How sure a ratio of two median times is: the 95% interval that every speedup, peer
ratio and NEW/OLD ratio of the reports carries, and the rank test of `compare`.

The interval of ratio = median(a) / median(b):

- both cases have raw per-call times (`time_samples`): a percentile bootstrap of the ratio
  of medians, each side resampled on its own (the two cases were timed separately),
  `RESAMPLES` resamples from a fixed seed, so the same inputs always give the same
  interval;
- otherwise, from the 95% interval of each median (`time_ci95_low/high`), conservatively:
  low = a_low / b_high and high = a_high / b_low (wider than the interval of the ratio,
  never narrower). A record that has no such interval (schema version 1) gets the
  approximate one of a box plot's notch, median ± 1.58 IQR / sqrt(rounds) (McGill, Tukey
  and Larsen 1978), and the ratio's interval says "notch";
- otherwise no interval (NaN): the ratio is shown bare and never read as a difference.

Two cases timed in the same interleaved passes (one `interleave_group`) are compared pass
by pass instead (`ratio`, `paired_ratio`): the ratio is the median of their per-pass
ratios, its interval that median's order-statistic one.
"""

from __future__ import annotations

import functools
import json
import math
import statistics

import numpy as np

from . import schema

RESAMPLES = 2000
SEED = 20150601  # fixed: a report rebuilt from the same files shows the same intervals
MIN_SAMPLES = 5  # fewer raw times than this do not make a bootstrap worth trusting
LEVEL = 0.95


def samples(value) -> np.ndarray | None:
    """The per-call times of a `time_samples` cell (the record's dict, its JSON text as the
    tidy table holds it, or a plain list), or None when absent or unreadable."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.ndarray):
        xs = value
    else:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        try:
            xs = schema.decode_samples(value)
        except (ValueError, TypeError, KeyError):
            return None
        if xs is None:
            return None
    xs = np.asarray(xs, dtype=float)
    xs = xs[np.isfinite(xs) & (xs > 0)]
    return xs if len(xs) >= MIN_SAMPLES else None


def median_ci(times: list[float], confidence: float = 0.95) -> tuple[float, float] | tuple[None, None]:
    """Distribution-free interval of the median from order statistics: the j-th and k-th
    smallest values, j and k the binomial(n, 1/2) quantiles that enclose `confidence`.
    (None, None) below 6 values, where no such pair reaches 95%."""
    n = len(times)
    if n < 6:
        return None, None
    s = sorted(times)
    j = _lower_rank(n, (1 - confidence) / 2)
    return s[j], s[n - 1 - j]


@functools.lru_cache(maxsize=4096)
def _lower_rank(n: int, tail: float) -> int:
    """The largest 0-based j with P(Binomial(n, 1/2) <= j) <= tail."""
    if n > 1000:  # normal approximation, exact to a rank at these sizes
        return max(0, int(math.floor(n / 2 - 1 - statistics.NormalDist().inv_cdf(1 - tail) * math.sqrt(n) / 2)))
    total, cdf, j = 2.0 ** n, 0.0, -1
    for i in range(n + 1):
        cdf += math.comb(n, i) / total
        if cdf > tail:
            break
        j = i
    return max(j, 0)


MIN_PAIRED_PASSES = 6  # the fewest pass ratios whose median has a 95% interval


def _passes(value) -> list[float] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, (list, tuple, np.ndarray)):
        return None
    return [float(v) for v in value]


def paired_ratio(a, b) -> tuple[float, float, float] | None:
    """(ratio, low, high) of a's time / b's from the passes in which both were timed, for
    two records of one interleaved measurement (the same `interleave_group`): the median
    of the per-pass ratios of their pass medians, with its order-statistic 95% interval.
    The two saw the same stretches of the machine pass by pass, so this ratio repeats far
    better than one of pooled medians, whose mix of fast and slow stretches differs from
    case to case. None when the records are not paired or share fewer than
    MIN_PAIRED_PASSES passes."""
    group = a.get("interleave_group")
    if not isinstance(group, str) or not group or group != b.get("interleave_group"):
        return None
    pa, pb = _passes(a.get("time_pass_medians")), _passes(b.get("time_pass_medians"))
    if not pa or not pb:
        return None
    n = min(len(pa), len(pb))  # a case that stopped early was timed in a prefix of the passes
    ratios = [x / y for x, y in zip(pa[:n], pb[:n]) if _finite(x, y)]
    if len(ratios) < MIN_PAIRED_PASSES:
        return None
    low, high = median_ci(ratios)
    return float(statistics.median(ratios)), float(low), float(high)


def _finite(*values) -> bool:
    """Every value a positive finite number."""
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
               and math.isfinite(v) and v > 0 for v in values)


def bootstrap_ratio(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(a) / median(b)."""
    rng = np.random.default_rng(SEED)
    ma = np.median(a[rng.integers(0, len(a), (RESAMPLES, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), (RESAMPLES, len(b)))], axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ma / mb, [tail, 100 - tail])
    return float(low), float(high)


NOTCH = 1.58  # box-plot notch: median ± 1.58 IQR / sqrt(n) spans about 95% for the median


def median_interval(case) -> tuple[float, float, str | None]:
    """(low, high, how) of one case's median time: its recorded 95% interval ("ci"), else
    the notch from its IQR and rounds ("notch"), else NaN. `case` maps the record's fields
    (time_ci95_low, time_ci95_high, time_median, time_iqr, rounds)."""
    low, high = case.get("time_ci95_low"), case.get("time_ci95_high")
    if _finite(low, high):
        return float(low), float(high), "ci"
    median, iqr, rounds = case.get("time_median"), case.get("time_iqr"), case.get("rounds")
    if _finite(median, iqr, rounds):
        half = NOTCH * iqr / math.sqrt(rounds)
        if half < median:
            return median - half, median + half, "notch"
    return math.nan, math.nan, None


def ratio_interval(a_samples=None, b_samples=None, a_interval=(math.nan, math.nan, None),
                   b_interval=(math.nan, math.nan, None)) -> tuple[float, float, str | None]:
    """(low, high, method) of the ratio a / b of two cases' median times, from their raw
    times or else their medians' intervals (`median_interval`, or asv's 99% one: "ci99");
    method is "bootstrap", "ci", "ci99", "notch" or None (then low and high are NaN). See
    the module docstring."""
    if a_samples is not None and b_samples is not None:
        low, high = bootstrap_ratio(a_samples, b_samples)
        return low, high, "bootstrap"
    (a_low, a_high, a_how), (b_low, b_high, b_how) = a_interval, b_interval
    if _finite(a_low, a_high, b_low, b_high):
        # named after the roughest of the two (asv's own interval is a 99% one)
        how = next((h for h in ("notch", "ci99") if h in (a_how, b_how)), "ci")
        return a_low / b_high, a_high / b_low, how
    return math.nan, math.nan, None


def ratio_of(a, b) -> tuple[float, float, str | None]:
    """The interval of a's median time / b's, for two records (dicts or rows of the tidy
    table: time_samples, time_ci95_low/high, time_median, time_iqr, rounds)."""
    return ratio_interval(samples(a.get("time_samples")), samples(b.get("time_samples")),
                          median_interval(a), median_interval(b))


def ratio(a, b) -> tuple[float, float, float, str | None]:
    """(ratio, low, high, method) of a's time / b's, for two records: paired by pass
    (paired_ratio, method "paired") when they were timed in the same interleaved passes,
    else median / median with ratio_of's interval."""
    paired = paired_ratio(a, b)
    if paired is not None:
        return (*paired, "paired")
    try:
        value = float(a.get("time_median")) / float(b.get("time_median"))
    except (TypeError, ValueError, ZeroDivisionError):
        value = math.nan
    return (value, *ratio_of(a, b))


def verdict(low: float, high: float) -> str:
    """How far an interval of a ratio lets a sentence go: "above" 1, "below" 1, "spans" 1
    (no clear difference), or "unknown" (no interval)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "unknown"
    if low > 1:
        return "above"
    if high < 1:
        return "below"
    return "spans"


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann–Whitney U p-value of the per-call times of two cases."""
    from scipy.stats import mannwhitneyu  # only compare needs scipy

    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
