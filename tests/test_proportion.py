"""Wilson score intervals against hand-computed values."""

from __future__ import annotations

import math

import pytest

from nodule.evaluation.proportion import wilson


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(59, 64), (64, 64), (0, 10), (22, 25)])
def test_wilson_matches_the_formula(k: int, n: int) -> None:
    p = wilson(k, n)
    low, high = _wilson_by_hand(k, n)
    assert p.low == pytest.approx(low, abs=1e-9)
    assert p.high == pytest.approx(high, abs=1e-9)
    assert p.low <= p.value <= p.high
    assert p.low >= 0.0 and p.high <= 1.0


def test_all_hits_has_an_upper_bound_of_one_and_a_lower_bound_below() -> None:
    p = wilson(30, 30)
    assert p.high == pytest.approx(1.0) and p.low < 0.9
    assert str(p).startswith("1.000 (30/30) [")


def test_bad_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="hits <= n"):
        wilson(5, 4)
    with pytest.raises(ValueError, match="level"):
        wilson(1, 4, level=1.5)
    assert math.isnan(wilson(0, 0).value)
