import math

import pytest

from bnnsearch.schedules import decay, interpolate


def test_decay_endpoints_and_midpoints():
    assert decay("none", 0.7) == 1.0
    assert decay("cosine", 0) == 1.0 and abs(decay("cosine", 1)) < 1e-12
    assert decay("cosine", 0.5) == pytest.approx(0.5)
    assert decay("linear", 0.25) == 0.75


def test_interpolate():
    assert interpolate("linear", 1, 3, 0.5) == 2
    assert interpolate("exponential", 1, 100, 0.5) == pytest.approx(10)
    assert interpolate("cosine", 1, 3, 0) == pytest.approx(1) and interpolate("cosine", 1, 3, 1) == pytest.approx(3)
    with pytest.raises(ValueError):
        decay("bogus", 0.1)
    assert not math.isnan(interpolate("exponential", 2, 2, 0.3))
