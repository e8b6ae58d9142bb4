"""Statistics of a seeds study: mean and sample spread, paired differences, McNemar's test.

Torch-free and small, so that each formula can be checked by hand (tests/test_seeds.py does).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats as sps

EXACT_BELOW = 25  # discordant pairs: under this McNemar uses the exact binomial test, else chi-square


def spread(xs: Sequence[float]) -> dict:
    """{"mean", "std" (sample, ddof = 1; None for one value), "n"}."""
    xs = [float(x) for x in xs]
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else None, "n": len(xs)}


def paired(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict:
    """a - b paired by position: the differences, their mean, sample std, n and the two-sided t-interval of
    the mean difference (None below two pairs)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired differences need two equally long, non-empty lists")
    d = [x - y for x, y in zip(a, b, strict=True)]
    out = spread(d) | {"differences": d}
    if out["std"] is None:
        out["ci95"] = None
    else:
        half = sps.t.ppf(0.5 + level / 2, len(d) - 1) * out["std"] / math.sqrt(len(d))
        out["ci95"] = [out["mean"] - half, out["mean"] + half]
    return out


def mcnemar(only_a: int, only_b: int) -> dict:
    """McNemar's test of two classifiers on the same items, from the discordant counts: `only_a` items
    that A gets right and B wrong, `only_b` the reverse. Exact two-sided binomial test (p = 1/2) when
    there are fewer than EXACT_BELOW discordant items, else chi-square with continuity correction."""
    if only_a < 0 or only_b < 0:
        raise ValueError("discordant counts cannot be negative")
    n = only_a + only_b
    if n == 0:
        return {"only_a": 0, "only_b": 0, "method": "exact binomial", "statistic": None, "p_value": 1.0}
    if n < EXACT_BELOW:
        p = min(1.0, 2 * sps.binom.cdf(min(only_a, only_b), n, 0.5))
        return {"only_a": only_a, "only_b": only_b, "method": "exact binomial", "statistic": None, "p_value": p}
    chi2 = (abs(only_a - only_b) - 1) ** 2 / n
    return {"only_a": only_a, "only_b": only_b, "method": "chi-square, continuity-corrected", "statistic": chi2,
            "p_value": float(sps.chi2.sf(chi2, 1))}
