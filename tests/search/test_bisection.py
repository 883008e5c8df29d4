"""The PAC-Bayes σ search (``search/bisection.py``) on costs whose crossing is known: a power law
f(σ) = (σ/σ*)^p · limit crosses the limit at σ*."""

from __future__ import annotations

import pytest

from landscape_cli.search.bisection import largest_within


def power_law(crossing: float, power: float, limit: float = 0.1):
    calls: list[float] = []

    def f(sigma: float) -> tuple[float, None]:
        calls.append(sigma)
        return limit * (sigma / crossing) ** power, None

    return f, calls


@pytest.mark.parametrize("power", [2.0, 3.9])
def test_the_bracket_holds_the_crossing_within_its_tolerance(power):
    f, _ = power_law(0.042, power)
    found = largest_within(f, 0.1, start=0.16, rtol=1e-2)
    assert found.low <= 0.042 < found.high and found.high - found.low <= 1e-2 * found.high
    assert found.slope == pytest.approx(power, rel=1e-9)  # measured across the bracket


def test_a_measured_slope_brackets_from_one_point_and_an_assumed_one_does_not_waste_a_pair():
    """From a start near the crossing, the slope a pilot measured predicts it, and the pair
    either side closes the bracket: three evaluations. Without it (f ∝ σ² assumed), a far start
    is followed by single points until both sides are known, not by pairs."""
    f, calls = power_law(0.042, 3.9)
    found = largest_within(f, 0.1, start=0.0428, rtol=1e-2, slope=3.9)
    assert found.evaluations == len(calls) == 3
    assert found.low <= 0.042 < found.high
    f, calls = power_law(0.042, 3.9)
    found = largest_within(f, 0.1, start=0.16, rtol=1e-2)
    above, below = calls[0] > 0.042, calls[1] < 0.042  # the start, then one point: no pair yet
    assert above and below and abs(calls[2] / calls[1] - 1) > 1e-2
    assert found.low <= 0.042 < found.high and found.evaluations <= 6
