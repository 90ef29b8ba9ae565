"""Binomial proportions with Wilson score intervals (candidate sensitivity, hit rates).

The Wilson interval keeps its coverage near the nominal level for small counts and for
proportions near 0 or 1, where the normal (Wald) interval fails: a candidate stage that
hits 59 of 64 nodules has a Wald upper bound above 0.98 but a Wilson one of 0.966.
Computed by :func:`scipy.stats.binomtest`.
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import binomtest


@dataclass(frozen=True)
class Proportion:
    """``hits`` of ``n`` with a Wilson score interval at ``level``."""

    hits: int
    n: int
    low: float
    high: float
    level: float = 0.95

    @property
    def value(self) -> float:
        """The point estimate hits / n (nan when n is 0)."""
        return self.hits / self.n if self.n else float("nan")

    def __str__(self) -> str:
        if not self.n:
            return "0/0"
        return f"{self.value:.3f} ({self.hits}/{self.n}) [{self.low:.3f}, {self.high:.3f}]"


def wilson(hits: int, n: int, level: float = 0.95) -> Proportion:
    """The proportion ``hits / n`` with its Wilson score interval.

    Raises:
        ValueError: counts that are negative, or more hits than trials, or a level outside (0, 1).
    """
    if n < 0 or hits < 0 or hits > n:
        raise ValueError(f"need 0 <= hits <= n, got hits={hits}, n={n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n == 0:
        return Proportion(0, 0, float("nan"), float("nan"), level)
    ci = binomtest(int(hits), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return Proportion(int(hits), int(n), float(ci.low), float(ci.high), level)
