"""Small-sample statistics for comparing algorithms over a few seeds, in pure Python.

Benchmarks here have 2–5 seeds, so a normal approximation (±1.96·σ/√n) would
understate the uncertainty badly; the Student t quantile with n−1 degrees of
freedom is the honest interval (t(0.975, 1) = 12.71, t(0.975, 2) = 4.30).
The t distribution is computed from the regularized incomplete beta function
(Numerical Recipes §6.4), so there is no scipy dependency and any df works,
including the fractional df of Welch's test.
"""

from __future__ import annotations

import math
from typing import Sequence


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Lentz's continued fraction for I_x(a, b) (converges fast for x < (a+1)/(a+b+2))."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with df degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t (e.g. q = 0.975 for a two-sided 95% interval), by bisection on t_cdf."""
    if not 0.0 < q < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < q < 1 and df > 0, got q={q}, df={df}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None]:
    """(mean, half-width of the two-sided t interval); the half-width is None for fewer than two values."""
    n = len(values)
    if n == 0:
        return math.nan, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)


def welch_test(a: Sequence[float], b: Sequence[float]) -> dict | None:
    """Welch's unequal-variance t-test of mean(a) − mean(b): {diff, t, df, p (two-sided)}; None below two values each.

    With 2–3 seeds the test has little power: p > 0.05 means "not distinguishable
    with this many seeds", not "equal".
    """
    if len(a) < 2 or len(b) < 2:
        return None
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((v - ma) ** 2 for v in a) / (len(a) - 1) / len(a)
    vb = sum((v - mb) ** 2 for v in b) / (len(b) - 1) / len(b)
    diff, se2 = ma - mb, va + vb
    if se2 == 0.0:  # every seed gave the same value on both sides (discrete scores make this possible)
        return {"diff": diff, "t": math.copysign(math.inf, diff) if diff else 0.0, "df": math.nan, "p": 0.0 if diff else 1.0}
    df = se2**2 / ((va**2 / (len(a) - 1) if va else 0.0) + (vb**2 / (len(b) - 1) if vb else 0.0))
    t = diff / math.sqrt(se2)
    return {"diff": diff, "t": t, "df": df, "p": 2.0 * (1.0 - t_cdf(abs(t), df))}
