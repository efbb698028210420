"""What a trial reports to Ray Tune and how the driver, the searcher and the MLflow record read
it back: a packed trial's members, the results a trial held back between reports, each
objective's value (worst-case for a diverged trial) and the constraint values. No Ray import:
the trial side (``trial.py``) and the driver side (``sweep.py``, ``searcher.py``, ``record.py``)
share it."""
from __future__ import annotations

import json
import math

from .spaces import SearchSpace

BIG = 1e30  # finite stand-in for inf in reports (samplers, JSON and MLflow refuse non-finite values)
PACK_KEY = "bnnsearch_pack"  # a packed Ray trial's config: {PACK_KEY: [member params, ...]}
CKPT_FLAG = "bnnsearch_checkpointed"  # in a result that carries a Ray checkpoint
EARLIER = "earlier"  # in a result: the trial's results held back since its last report (a JSON list)


def member_id(trial_id: str, k: int) -> str:
    """The id of member k of a packed Ray trial: its MLflow run's trial tag, its Optuna trial."""
    return f"{trial_id}#{k}"


def member_results(result: dict | None) -> dict[str, dict] | None:
    """A packed trial's per-member metrics, ``{"0": {...}, ...}``; None for an unpacked trial.

    A packed trial reports them as one JSON string (``members``): Ray keeps running statistics
    of every numeric key of a result (max, min, means over the last 5 and 10) and re-encodes
    them into its experiment snapshot on every result, in pure-Python JSON; 8 members' ~30
    metrics as numbers made that ~210 kB and ~18 ms per report (measured), as a string ~11 kB
    and 0.4 ms. Results of studies recorded before (a nested dict, or flattened with "/" in
    what searchers get) are still read."""
    if not result:
        return None
    ms = result.get("members")
    if isinstance(ms, str):
        return json.loads(ms)
    if isinstance(ms, dict):
        return ms
    out: dict[str, dict] = {}
    for key, v in result.items():
        if key.startswith("members/"):
            k, _, name = key[8:].partition("/")
            out.setdefault(k, {})[name] = v
    return out or None


def trial_metrics(result: dict | None) -> dict:
    """An unpacked trial's result with its metrics merged in. A trial reports to Ray only what
    Ray and the searcher read as numbers (epoch, diverged, objective and constraint values) and
    the rest as one JSON string under ``metrics``: Ray keeps running statistics of every
    numeric key and re-encodes them into its experiment snapshot on every result (the cost
    ``member_results`` describes for packs). Results recorded before (every metric a key) are
    returned as they are."""
    if not result:
        return {}
    ms = result.get("metrics")
    if isinstance(ms, str):
        return {**json.loads(ms), **{k: v for k, v in result.items() if k not in ("metrics", EARLIER)}}
    return result


def earlier_results(result: dict | None) -> list[dict]:
    """The results a trial held back since its previous report, oldest first (see _Sender);
    each reads like a result (``trial_metrics``, ``member_results``)."""
    held = (result or {}).get(EARLIER)
    return json.loads(held) if isinstance(held, str) else []


def members_of(trial_id: str, config: dict) -> list[tuple[str, dict, int | None]]:
    """(member id, params, index in the pack or None) of every configuration a Ray trial trains."""
    pack = config.get(PACK_KEY)
    if pack is None:
        return [(trial_id, config, None)]
    return [(member_id(trial_id, k), c, k) for k, c in enumerate(pack)]



def worst_value(space: SearchSpace, metric: str | None = None, mode: str | None = None) -> float:
    metric, mode = metric or space.metric, mode or space.mode
    if mode == "max":
        return 0.0 if metric.endswith("/acc") else -BIG
    return BIG


def objective_of(m: dict, space: SearchSpace, metric: str | None = None, mode: str | None = None) -> float:
    v = m.get(metric or space.metric)
    if m.get("diverged") or v is None or not math.isfinite(v):
        return worst_value(space, metric, mode)
    return float(v)


def objective_keys(space: SearchSpace) -> list[str]:
    """The result keys the sampler is told: ``objective``, then ``objective_1``, ... ."""
    return ["objective"] + [f"objective_{i}" for i in range(1, len(space.objectives))]


def objective_fields(m: dict, space: SearchSpace) -> dict:
    """What a trial reports beside its metrics: each objective's value (worst-case when
    diverged: never on a front) and, for constrained studies, Optuna constraint values."""
    out = {k: objective_of(m, space, metric, mode) for k, (metric, mode) in zip(objective_keys(space), space.objectives)}
    if space.constraints:
        from .automl import constraint_values

        out.update({f"constraint/{k}": v for k, v in constraint_values(m, space).items()})
    return out


def feasible(m: dict) -> bool:
    return all(v <= 0 for k, v in m.items() if k.startswith("constraint/"))


def sanitize(m: dict) -> dict:
    out = {}
    for k, v in m.items():
        if isinstance(v, float) and not math.isfinite(v):
            if math.isnan(v):
                continue
            v = math.copysign(BIG, v)
        out[k] = v
    return out

