"""Early stopping of single members of packed trials: Ray Tune's ASHA rule, per member.

Ray's ``ASHAScheduler`` decides per Ray trial; a packed trial holds K members that must be
stopped one by one (the rest of the pack trains on). :class:`Rungs` applies the rule of Ray's
ASHA bracket (``ray.tune.schedulers.async_hyperband._Bracket``, one bracket, the settings the
unpacked study uses: ``grace_period=1``, ``reduction_factor=3``, ``max_t`` = the epochs) to
member results: milestones ``grace * rf**k`` (Ray's count of rungs); a member reaching a milestone is stopped
when its value is below the ``1 - 1/rf`` quantile of the values recorded at that milestone before
it (``numpy.nanpercentile``, as Ray), then its value is recorded. ``mode: min`` negates values.

One :class:`Rungs` per study lives in a Ray actor (:func:`rungs_actor`) that every pack of the
study asks once per epoch; a resumed study refills it from the members' recorded objectives, so a
stop decision never depends on whether the driver was restarted.
"""
from __future__ import annotations

import math


class Rungs:
    def __init__(self, max_t: int, mode: str = "max", grace_period: int = 1, reduction_factor: float = 3):
        self.rf, self.sign = reduction_factor, (1.0 if mode == "max" else -1.0)
        # Ray's _Bracket (s = 0): MAX_RUNGS = int(log(max_t / min_t) / log(rf) + 1), rungs at
        # min_t * rf**k, kept highest first; a trial is recorded in the first rung it has reached
        # and is not yet in.
        n = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
        self.rungs: list[tuple[float, dict[str, float]]] = [(grace_period * reduction_factor**k, {})
                                                            for k in reversed(range(n))]

    def cutoff(self, recorded: dict[str, float]) -> float | None:
        import numpy as np

        if not recorded:
            return None
        return float(np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100))

    def on_result(self, member: str, epoch: int, value: float) -> bool:
        """Record ``member``'s value at ``epoch``; True when it must stop."""
        v = self.sign * value
        for milestone, recorded in self.rungs:
            if epoch < milestone or member in recorded:
                continue
            c = self.cutoff(recorded)
            recorded[member] = v
            return c is not None and v < c
        return False

    def seed(self, histories: dict[str, dict[int, float]]) -> None:
        """Refill from recorded objectives ({member: {epoch: value}}) after a driver restart,
        in epoch order (the order the values first arrived in, up to ties within an epoch)."""
        events = sorted((e, mid, v) for mid, h in histories.items() for e, v in h.items())
        for e, mid, v in events:
            self.on_result(mid, e, v)

    def decide(self, results: list[tuple[str, int, float]]) -> list[str]:
        return [mid for mid, e, v in results if self.on_result(mid, e, v)]


def rungs_actor(name: str, max_t: int, mode: str, histories: dict[str, dict[int, float]] | None = None):
    """The study's named Ray actor holding its :class:`Rungs` (created by the driver; it goes
    when the driver goes)."""
    import ray

    actor = ray.remote(num_cpus=0)(Rungs).options(name=name, get_if_exists=True).remote(max_t, mode)
    if histories:
        ray.get(actor.seed.remote(histories))
    return actor
