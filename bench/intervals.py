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
by pass instead (`ratio`, `paired_ratio`). A sweep (bench/sweep.py) times them in several
rounds spread over its duration, each round in fresh worker processes, so the variance
that matters, between processes and between the machine's states, is seen between
rounds (Kalibera and Jones, "Rigorous benchmarking in reasonable time", ISMM 2013):

- a round's ratio is the median of its per-pass ratios; the ratio is the geometric mean
  of the rounds' ratios, its 95% confidence interval Student's t on their logarithms
  (method "rounds");
- its 95% prediction interval says where the ratio of a rerun with as many rounds is
  expected to fall: the confidence interval widened by sqrt(2) (`prediction`). A correct
  95% confidence interval covers another run's estimate only about 83% of the time;
- records of a single round (schema 2, or `--rounds 1`) keep the pass-level interval:
  the median of the per-pass ratios with its order-statistic interval (method "paired"),
  and no prediction interval.
"""

from __future__ import annotations

import dataclasses
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
MIN_ROUNDS = 2  # the fewest rounds whose spread gives an interval


def _parsed(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def rounds_of(value) -> list[list[float]] | None:
    """`time_pass_medians` as rounds of pass medians: a list of lists (a sweep's rounds), or
    a flat list (one interleaved measurement, schema 2), which is one round."""
    value = _parsed(value)
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) == 0:
        return None
    if all(isinstance(v, (list, tuple, np.ndarray)) for v in value):
        return [[float(x) for x in r] for r in value]
    if any(isinstance(v, (list, tuple, np.ndarray)) for v in value):
        return None
    return [[float(v) for v in value]]


def round_ratios(a, b) -> list[list[float]] | None:
    """Per round, the per-pass ratios a / b of two records of one interleaved measurement
    (the same `interleave_group`), over the passes both have; None when not paired."""
    group = a.get("interleave_group")
    if not isinstance(group, str) or not group or group != b.get("interleave_group"):
        return None
    ra, rb = rounds_of(a.get("time_pass_medians")), rounds_of(b.get("time_pass_medians"))
    if not ra or not rb:
        return None
    out = []
    for pa, pb in zip(ra, rb):  # a case that stopped early was timed in a prefix of the passes
        out.append([x / y for x, y in zip(pa, pb) if _finite(x, y)])
    return out


def t_quantile(df: int, level: float = LEVEL) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A ratio with its 95% confidence interval and, from rounds, its 95% prediction
    interval (NaN where there is none); `rounds` the rounds behind it; `p_value` (from
    rounds) the two-sided p of Student's t that the ratio is 1."""

    value: float
    low: float
    high: float
    method: str
    pi_low: float = math.nan
    pi_high: float = math.nan
    rounds: int = 1
    p_value: float = math.nan

    @property
    def pi_halfwidth(self) -> float:
        """Half the prediction interval, relative, on the logarithmic scale the interval is
        symmetric on: 0.08 for [r / 1.08, r * 1.08] (NaN without one)."""
        return math.sqrt(self.pi_high / self.pi_low) - 1 if _finite(self.pi_low, self.pi_high) else math.nan


def from_rounds(values) -> Estimate | None:
    """The geometric mean of per-round values (ratios or times, > 0), Student's t interval
    on their logarithms and the prediction interval of a rerun with as many rounds."""
    xs = np.log([v for v in values if _finite(v)])
    n = len(xs)
    if n < MIN_ROUNDS:
        return None
    mean, sd = float(xs.mean()), float(xs.std(ddof=1))
    t = t_quantile(n - 1)
    ci, pi = t * sd / math.sqrt(n), t * sd * math.sqrt(2 / n)
    from scipy.stats import t as student

    p = 2 * float(student.sf(abs(mean) / (sd / math.sqrt(n)), n - 1)) if sd > 0 else float(mean == 0)
    return Estimate(math.exp(mean), math.exp(mean - ci), math.exp(mean + ci), "rounds",
                    math.exp(mean - pi), math.exp(mean + pi), n, p)


def estimate(ratios_by_round: list[list[float]]) -> Estimate | None:
    """The estimate of a ratio from its per-pass values grouped by round: from the rounds'
    medians when at least MIN_ROUNDS rounds have passes, else the one round's median of
    per-pass ratios with its order-statistic interval (at least MIN_PAIRED_PASSES)."""
    rounds = [r for r in ratios_by_round if r]
    if len(rounds) >= MIN_ROUNDS:
        return from_rounds([statistics.median(r) for r in rounds])
    passes = [x for r in rounds for x in r]
    if len(passes) < MIN_PAIRED_PASSES:
        return None
    low, high = median_ci(passes)
    return Estimate(float(statistics.median(passes)), float(low), float(high), "paired")


def paired_estimate(a, b) -> Estimate | None:
    """a's time / b's for two records timed in the same interleaved passes (see the module
    docstring), or None when they were not, or share too few passes."""
    by_round = round_ratios(a, b)
    return estimate(by_round) if by_round is not None else None


def paired_ratio(a, b) -> tuple[float, float, float] | None:
    """(ratio, low, high) of paired_estimate."""
    e = paired_estimate(a, b)
    return None if e is None else (e.value, e.low, e.high)


def split(values, gap: float = 0.10, min_size: int = 2) -> tuple[list[int], list[int]] | None:
    """Two groups of indices when `values` (per-process figures, > 0) fall apart into a
    low and a high group: sorted, the largest step between neighbours is above `gap`
    (relative) and above twice the spread within either side, with at least `min_size`
    on each side; else None. A process's state can fix a mode for its whole life (the
    dense layer at (256,256,8,3): 3.8-4.1 ms in some fresh processes, 5.5-6.8 ms in
    others), so a mean over processes would describe neither."""
    logs = [(math.log(v), i) for i, v in enumerate(values) if _finite(v)]
    if len(logs) < 2 * min_size:
        return None
    logs.sort()
    steps = [(logs[k + 1][0] - logs[k][0], k) for k in range(min_size - 1, len(logs) - min_size)]
    size, k = max(steps)
    low, high = logs[:k + 1], logs[k + 1:]
    spread = max(low[-1][0] - low[0][0], high[-1][0] - high[0][0])
    if size <= math.log1p(gap) or size <= 2 * spread:
        return None
    return [i for _, i in low], [i for _, i in high]


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
    """(ratio, low, high, method) of a's time / b's, for two records: paired (by rounds,
    method "rounds", or by pass, "paired") when they were timed in the same interleaved
    passes, else median / median with ratio_of's interval."""
    paired = paired_estimate(a, b)
    if paired is not None:
        return paired.value, paired.low, paired.high, paired.method
    try:
        value = float(a.get("time_median")) / float(b.get("time_median"))
    except (TypeError, ValueError, ZeroDivisionError):
        value = math.nan
    return (value, *ratio_of(a, b))


def prediction(a, b) -> tuple[float, float]:
    """The 95% prediction interval of a's time / b's (where a rerun's ratio is expected to
    fall), for two records timed in the same rounds; (NaN, NaN) otherwise."""
    paired = paired_estimate(a, b)
    return (paired.pi_low, paired.pi_high) if paired is not None else (math.nan, math.nan)


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


def welch_ratio(new, old, factor: float = 1.0, level: float = LEVEL) -> tuple[float, float, float, float]:
    """(ratio, low, high, p) of two runs' per-round values of one case (rounds' medians):
    the ratio of their geometric means divided by `factor`, Welch's t interval on the
    logarithms and the two-sided p-value of no change."""
    from scipy.stats import t, ttest_ind

    a, b = np.log(np.asarray(new, dtype=float)) - math.log(factor), np.log(np.asarray(old, dtype=float))
    diff = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return math.exp(diff), math.exp(diff), math.exp(diff), 0.0 if diff else 1.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(t.ppf(0.5 + level / 2, df)) * se
    p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return math.exp(diff), math.exp(diff - half), math.exp(diff + half), p


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Mann–Whitney U p-value of the per-call times of two cases."""
    from scipy.stats import mannwhitneyu  # only compare needs scipy

    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
