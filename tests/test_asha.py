"""Member-level ASHA (bnnsearch/asha.py) against its reference, Ray Tune's own ASHA bracket."""
import random

import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.schedulers.async_hyperband import _Bracket

from bnnsearch.asha import Rungs


class _T:
    def __init__(self, i):
        self.trial_id = str(i)


@pytest.mark.parametrize("epochs", [2, 3, 4, 9, 10])
@pytest.mark.parametrize("mode", ["max", "min"])
def test_same_decisions_as_rays_bracket(epochs, mode):
    stops = 0
    for seed in range(15):
        rnd = random.Random(seed)
        ray_b, ours = _Bracket(1, epochs, 3, 0), Rungs(epochs, mode)
        alive, ep = list(range(12)), dict.fromkeys(range(12), 0)
        while alive:
            i = rnd.choice(alive)
            ep[i] += 1
            v = rnd.random()
            want = ray_b.on_result(_T(i), ep[i], v if mode == "max" else -v) == TrialScheduler.STOP
            assert ours.on_result(str(i), ep[i], v) == want, (seed, i, ep[i])
            stops += want
            if want or ep[i] >= epochs:
                alive.remove(i)
    assert stops > 0  # the streams exercise stopping


def test_seeding_replays_the_recorded_values():
    a, b = Rungs(9, "max"), Rungs(9, "max")
    hist = {"x": {1: 0.5, 2: 0.6, 3: 0.7}, "y": {1: 0.4}, "z": {1: 0.9, 2: 0.9, 3: 0.95}}
    for e in (1, 2, 3):
        a.decide([(m, e, h[e]) for m, h in hist.items() if e in h])
    b.seed(hist)
    assert a.rungs == b.rungs
    assert b.decide([("w", 1, 0.1)]) == ["w"]  # below the recorded rung-1 cutoff
