"""Three-way verdicts from measurements over seeds: *reproduced*, *inconclusive* or *contradicted*.

A verdict rests on a 95% interval of the quantity the claim is about, never on a bare mean:

- orderings ("A has lower MAE than B"): Welch's t interval of the difference of the means over seeds (unequal
  variances, Welch-Satterthwaite degrees of freedom). Reproduced when the whole interval lies on the paper's
  side of 0, contradicted when it lies on the other side, inconclusive when it contains 0;
- magnitudes (a ratio, a relative improvement, set against a threshold such as half the paper's factor): an
  interval of the ratio of means by the delta method on the log scale (Welch degrees of freedom); reproduced
  when it lies above the threshold, contradicted when below, inconclusive when it straddles it;
- single timings (benchmark ratios measured once, as a median over repeats): a band of +-``TIMING_TOL`` around
  the value stands for the interval (run-to-run timing noise on a shared 2-core machine is of that order);
- fewer than 2 seeds on a side: no interval, so *inconclusive* (the smoke profile's one seed).

With 95% intervals, two independent runs of a claim whose true difference is 0 land on opposite sides
(*reproduced* in one, *contradicted* in the other) with probability about 2 x 0.025^2 = 0.13%; a move to or
from *inconclusive* is what the rule is for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

REPRODUCED, INCONCLUSIVE, CONTRADICTED = "reproduced", "inconclusive", "contradicted"
LEVEL = 0.95
TIMING_TOL = 0.10


@dataclass(frozen=True)
class Interval:
    """A point estimate and its interval (``low`` = ``high`` = nan when there is none)."""

    value: float
    low: float
    high: float
    method: str

    @property
    def defined(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def text(self, digits: int = 4) -> str:
        if not self.defined:
            return f"{self.value:.{digits}g} (no interval: {self.method})"
        return f"{self.value:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"


def _mean_var(x: Sequence[float]) -> tuple[float, float, int]:
    n = len(x)
    m = sum(x) / n
    v = sum((a - m) ** 2 for a in x) / (n - 1) if n > 1 else float("nan")
    return m, v, n


def _welch_df(v1: float, n1: int, v2: float, n2: int) -> float:
    a, b = v1 / n1, v2 / n2
    if a + b == 0:
        return float("inf")
    return (a + b) ** 2 / ((a * a / (n1 - 1) if a else 0.0) + (b * b / (n2 - 1) if b else 0.0))


def _t(df: float, level: float = LEVEL) -> float:
    return float(stats.t.ppf(0.5 + level / 2, df)) if math.isfinite(df) else float(stats.norm.ppf(0.5 + level / 2))


def diff_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """mean(a) - mean(b) with Welch's t interval."""
    (ma, va, na), (mb, vb, nb) = _mean_var(a), _mean_var(b)
    if na < 2 or nb < 2:
        return Interval(ma - mb, float("nan"), float("nan"), f"{min(na, nb)} seed(s)")
    half = _t(_welch_df(va, na, vb, nb), level) * math.sqrt(va / na + vb / nb)
    return Interval(ma - mb, ma - mb - half, ma - mb + half, f"Welch t, {level:.0%}")


def ratio_interval(num: Sequence[float], den: Sequence[float], level: float = LEVEL) -> Interval:
    """mean(num) / mean(den), interval by the delta method on log(mean(num)) - log(mean(den))."""
    (mn, vn, nn), (md, vd, nd) = _mean_var(num), _mean_var(den)
    r = mn / md
    if nn < 2 or nd < 2 or mn <= 0 or md <= 0:
        return Interval(r, float("nan"), float("nan"), f"{min(nn, nd)} seed(s)" if min(nn, nd) < 2 else
                        "non-positive mean")
    vln, vld = vn / (mn * mn), vd / (md * md)
    half = _t(_welch_df(vln, nn, vld, nd), level) * math.sqrt(vln / nn + vld / nd)
    return Interval(r, r * math.exp(-half), r * math.exp(half), f"delta method on log ratio, {level:.0%}")


def mean_interval(x: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean of ``x`` with its t interval."""
    m, v, n = _mean_var(x)
    if n < 2:
        return Interval(m, float("nan"), float("nan"), f"{n} value(s)")
    half = _t(n - 1, level) * math.sqrt(v / n)
    return Interval(m, m - half, m + half, f"t, {level:.0%}")


def timing_interval(value: float, tol: float = TIMING_TOL) -> Interval:
    """A single timing or timing ratio with the +-``tol`` band that stands for its interval."""
    return Interval(value, value / (1 + tol), value * (1 + tol), f"+-{tol:.0%} timing band")


def relative_improvement_interval(ours: Sequence[float], base: Sequence[float]) -> Interval:
    """1 - mean(ours)/mean(base) (the paper's "improves by X%"), from :func:`ratio_interval`."""
    r = ratio_interval(ours, base)
    return Interval(1 - r.value, 1 - r.high, 1 - r.low, r.method)


def above(iv: Interval, threshold: float) -> str:
    """The verdict of "the quantity is at least ``threshold``"."""
    if not iv.defined:
        return INCONCLUSIVE
    return REPRODUCED if iv.low >= threshold else CONTRADICTED if iv.high < threshold else INCONCLUSIVE


def below(iv: Interval, threshold: float) -> str:
    """The verdict of "the quantity is below ``threshold``"."""
    if not iv.defined:
        return INCONCLUSIVE
    return REPRODUCED if iv.high < threshold else CONTRADICTED if iv.low >= threshold else INCONCLUSIVE


def between(iv: Interval, lo: float, hi: float) -> str:
    """The verdict of "lo <= quantity <= hi"."""
    if not iv.defined:
        return INCONCLUSIVE
    if lo <= iv.low and iv.high <= hi:
        return REPRODUCED
    return CONTRADICTED if iv.high < lo or iv.low > hi else INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """A claim made of several comparisons: contradicted if one is, reproduced if all are, else inconclusive."""
    if any(v == CONTRADICTED for v in verdicts):
        return CONTRADICTED
    return REPRODUCED if verdicts and all(v == REPRODUCED for v in verdicts) else INCONCLUSIVE


def ordering(better: Sequence[float], worse: Sequence[float], higher_is_better: bool = False) -> tuple[str, Interval]:
    """Verdict of "``better`` beats ``worse``" over seeds; the interval is of mean(worse) - mean(better) (positive
    = the paper's direction; for higher-is-better quantities, mean(better) - mean(worse))."""
    iv = diff_interval(better, worse) if higher_is_better else diff_interval(worse, better)
    return above_zero(iv), iv


def above_zero(iv: Interval) -> str:
    if not iv.defined:
        return INCONCLUSIVE
    return REPRODUCED if iv.low > 0 else CONTRADICTED if iv.high < 0 else INCONCLUSIVE


def slope_interval(xs: Sequence[float], ys: Sequence[float], level: float = LEVEL) -> Interval:
    """Least-squares slope of ``ys`` on ``xs`` with its t interval (n - 2 degrees of freedom)."""
    n = len(xs)
    if n < 3 or len(set(xs)) < 2:
        mx = sum(xs) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * y for x, y in zip(xs, ys, strict=True)) / sxx if sxx else float("nan")
        return Interval(slope, float("nan"), float("nan"), f"{n} point(s)")
    res = stats.linregress(xs, ys)
    half = _t(n - 2, level) * res.stderr
    return Interval(float(res.slope), float(res.slope - half), float(res.slope + half), f"OLS slope, t {level:.0%}")
