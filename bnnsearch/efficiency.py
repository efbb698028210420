"""Hyperparameter-efficiency statistics across repeated equal-budget studies (seed 002, Fig. 8).

Pure functions over plain lists (no Ray, no MLflow), so they are tested on hand-made results.
A study is the list of its trial values in trial order (full-budget trials; ``None`` for a trial
that produced no full-budget value — pruned or failed — which improves nothing but uses budget).

* best-so-far curve per study; mean across repeats with a 95 % t-interval band;
* target = the best value any study of any method reached, minus ``delta`` (plus for ``min``);
  for accuracy metrics ``delta`` is in percentage points (0.5 -> 0.005), otherwise in metric units;
* trials-to-target per study: the first 1-based trial index whose best-so-far reaches the target,
  or ``None`` when the budget ran out first (censored; ranked as budget + 1 in the tests below);
* area under the best-so-far curve (its mean over trial indices, so comparable across budgets;
  indices before a study's first value count as the worst value of the comparison);
* a rank test of trials-to-target between methods: Mann-Whitney U for two methods,
  Kruskal-Wallis for more; p < alpha reads "significant", otherwise "not significant";
* paired by repeat (repeat r of every arm shares sampler seed and data): Wilcoxon signed-rank for
  two arms, Friedman for more, and every pair of arms with Holm-adjusted p-values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

RANDOM_SUFFIX = "@random"  # a method's random-search arm in a comparison (compare --random-arm)


def pad_budget(values: list[float | None], trials: int) -> list[float | None]:
    """A study's values over its full budget: trials without a full-budget value (failed,
    pruned, or never run) used budget without improving anything."""
    return (list(values) + [None] * (trials - len(values)))[:trials]


def best_so_far(values: list[float | None], mode: str = "max") -> list[float]:
    out, best = [], None
    for v in values:
        if v is not None and math.isfinite(v) and (best is None or (v > best if mode == "max" else v < best)):
            best = v
        out.append(math.nan if best is None else best)
    return out


def incumbent_test(values: list[float | None], tests: list[float | None], mode: str = "max") -> list[float]:
    """The held-out (test) value of the configuration a study would pick after t trials: the
    trial with the best validation value so far (the first one on ties), for t = 1..N; NaN before
    the first valued trial. Unlike best-so-far validation, this is not biased upward by picking
    the maximum of noisy validation values."""
    out, best, pick = [], None, math.nan
    for v, t in zip(values, tests):
        if v is not None and math.isfinite(v) and (best is None or (v > best if mode == "max" else v < best)):
            best, pick = v, (math.nan if t is None else t)
        out.append(pick)
    return out


def cost_to_target(values: list[float | None], costs: list[float | None], target: float, mode: str) -> float | None:
    """Efficiency against cost rather than trial count: the summed cost (e.g. training seconds)
    of the trials up to and including the one that reaches the target; None if none does. A
    trial without a recorded cost counts as 0."""
    ttt = trials_to_target(best_so_far(values, mode), target, mode)
    return None if ttt is None else float(sum(c or 0.0 for c in costs[:ttt]))


def asha_rungs(max_t: int, grace: int = 1, reduction: int = 3) -> list[int]:
    """The epochs at which ASHA compares trials (grace * reduction**k below the full budget)."""
    out, r = [], grace
    while r < max_t:
        out.append(r)
        r *= reduction
    return out


def rung_correlations(histories: list[dict[int, float]], rungs: list[int], final_epoch: int) -> dict[int, dict]:
    """For each rung epoch: Spearman's rank correlation, across full-budget trials, between the
    objective at that epoch and at the final epoch — how well an early stop predicts the result."""
    from scipy import stats

    out = {}
    for r in rungs:
        pairs = [(h[r], h[final_epoch]) for h in histories if r in h and final_epoch in h
                 and math.isfinite(h[r]) and math.isfinite(h[final_epoch])]
        if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
            out[r] = {"n": len(pairs), "spearman": None}
            continue
        rho = stats.spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
        out[r] = {"n": len(pairs), "spearman": float(rho)}
    return out


def test_metric(metric: str) -> str | None:
    """The held-out counterpart of a validation objective (val/acc -> test/acc), if any."""
    return "test/" + metric[4:] if metric.startswith("val/") else None


def mean_band(curves: list[list[float]], level: float = 0.95) -> tuple[list[float], list[float], list[float]]:
    """Per index: mean and the t-interval (low, high) across curves (NaNs ignored)."""
    from scipy import stats

    n_idx = max(len(c) for c in curves)
    mean, low, high = [], [], []
    for i in range(n_idx):
        xs = [c[i] for c in curves if i < len(c) and not math.isnan(c[i])]
        if not xs:
            mean.append(math.nan), low.append(math.nan), high.append(math.nan)
            continue
        m = sum(xs) / len(xs)
        if len(xs) < 2:
            mean.append(m), low.append(m), high.append(m)
            continue
        sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
        h = stats.t.ppf(0.5 + level / 2, len(xs) - 1) * sd / math.sqrt(len(xs))
        mean.append(m), low.append(m - h), high.append(m + h)
    return mean, low, high


def target_value(all_values: list[float], mode: str, delta: float, metric: str) -> float:
    d = delta / 100.0 if metric.endswith("/acc") else delta
    finite = [v for v in all_values if v is not None and math.isfinite(v)]
    if not finite:
        raise ValueError("no finite trial value to define a target")
    return max(finite) - d if mode == "max" else min(finite) + d


def _random_median(studies: list[list[float | None]], startup: int) -> float | None:
    """What a random configuration reaches: the median of the full-budget values among the
    studies' first ``startup`` trials (random search in every arm); with none — e.g. all pruned —
    each study's first full-budget value. None without any finite value."""
    import statistics

    ok = lambda v: v is not None and math.isfinite(v)  # noqa: E731
    firsts = [v for s in studies for v in s[:max(1, startup)] if ok(v)]
    if not firsts:
        firsts = [next(v for v in s if ok(v)) for s in studies if any(ok(v) for v in s)]
    return statistics.median(firsts) if firsts else None


def _median_final(studies: list[list[float | None]], mode: str) -> float | None:
    """The median over studies of the final best-so-far value (None without any)."""
    import statistics

    finals = [c[-1] for c in (best_so_far(s, mode) for s in studies) if c and not math.isnan(c[-1])]
    return statistics.median(finals) if finals else None


def gap_target(per_arm: dict[str, list[list[float | None]]], mode: str, fraction: float,
               startup: int = 1) -> tuple[float, dict]:
    """A target a noisy study can meet: ``fraction`` of the way from what a random configuration
    reaches (the median of the full-budget values among every study's first ``startup`` trials,
    which are random search in every arm; with none — e.g. all pruned — each study's first
    full-budget value) to the best arm's median final best-so-far."""
    base = _random_median([s for arm in per_arm.values() for s in arm], startup)
    arm_medians = {arm: m for arm, studies in per_arm.items() if (m := _median_final(studies, mode)) is not None}
    if base is None or not arm_medians:
        raise ValueError("no finite trial value to define a target")
    best_arm = (max if mode == "max" else min)(arm_medians, key=arm_medians.get)
    top = arm_medians[best_arm]
    return base + fraction * (top - base), {"random_median": base, "best_arm": best_arm, "best_arm_median": top,
                                            "fraction": fraction}


def own_gap_ttt(per_arm: dict[str, list[list[float | None]]], mode: str, fraction: float,
                startup: int = 1) -> dict[str, dict]:
    """How much tuning each method needs to get where it gets: gap_target over *this method's*
    arms alone (its arms are named ``method`` and ``method@<sampler>``, e.g. its random-search
    arm, which then share one target) — ``fraction`` of the way from its random configurations
    to its own best arm's median final value — and each study's trials until its best-so-far
    reaches it (None: never). Unlike the common target, a method that plateaus lower is judged
    against its own plateau: read it beside the method's final value, never alone. A method
    whose plateau is no better than its random configurations is left out."""
    groups: dict[str, list[str]] = {}
    for arm in per_arm:
        groups.setdefault(arm.split("@", 1)[0], []).append(arm)
    out = {}
    for arms in groups.values():
        try:
            target, info = gap_target({a: per_arm[a] for a in arms}, mode, fraction, startup)
        except ValueError:  # no finite value at all
            continue
        base, top = info["random_median"], info["best_arm_median"]
        if not ((top > base) if mode == "max" else (top < base)):
            continue
        for arm in arms:
            ttt = [trials_to_target(best_so_far(s, mode), target, mode) for s in per_arm[arm]]
            budget = max(len(s) for s in per_arm[arm])
            (median, q1, q3), bounds = ttt_quartiles(ttt, budget)
            out[arm] = {"target": target, "random_median": base, "plateau": top, "plateau_arm": info["best_arm"],
                        "ttt": ttt, "median": median, "q1": q1, "q3": q3, "bounds": bounds,
                        "reached": sum(t is not None for t in ttt)}
    return out


def trials_to_target(curve: list[float], target: float, mode: str) -> int | None:
    for i, v in enumerate(curve, 1):
        if not math.isnan(v) and (v >= target if mode == "max" else v <= target):
            return i
    return None


def auc(curve: list[float], floor: float | None = None) -> float:
    """Mean of the best-so-far curve over trial indices. Indices before a study's first value
    (its first trials failed or were pruned) count as ``floor`` — the worst value any study of
    the comparison reached — rather than making the area undefined."""
    if not curve:
        return math.nan
    xs = [floor if math.isnan(v) else v for v in curve]
    return math.nan if any(x is None for x in xs) else sum(xs) / len(xs)


def bootstrap_ci(xs: list[float], stat, level: float = 0.95, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over studies (resampled with replacement; a
    fixed seed, so a summary is reproducible). With one study the interval is that value."""
    import numpy as np

    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return (math.nan, math.nan)
    a = np.asarray(xs, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n, len(a)))
    vals = np.sort(np.array([stat(a[i]) for i in idx]))
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


@dataclass
class MethodStats:
    method: str
    repeats: int
    budget: int
    mean: list[float]
    low: list[float]
    high: list[float]
    ttt: list[int | None]
    ttt_median: float
    ttt_q1: float
    ttt_q3: float
    reached: int
    auc_mean: float
    best_value: float
    auc_ci: tuple[float, float] = (math.nan, math.nan)  # 95 % bootstrap interval of the mean AUC
    ttt_median_ci: tuple[float, float] = (math.nan, math.nan)  # ... of the median trials-to-target
    ttt_bounds: tuple = (False, False, False)  # whether median, q1, q3 are only lower bounds (ttt_quartiles)
    aucs: list = field(default_factory=list)  # per study, in repeat order (paired across arms by seed)
    boot_low: list = field(default_factory=list)  # 95 % percentile-bootstrap band of the mean curve
    boot_high: list = field(default_factory=list)


def ttt_value(x: float, budget: int, bound: bool = False) -> str:
    """A median or quartile of trials-to-target as printed: studies that never reached the
    target rank as budget + 1, so a value above the budget says "not within it" and is shown as
    ``>budget`` (an 8-trial study's "9" read as nine trials); a value interpolated with such a
    study (``bound``, see ``ttt_quartiles``) is at least what it says, shown as ``>=x``."""
    return f">{budget}" if x > budget else f">={x:g}" if bound else f"{x:g}"


def ttt_text(median: float, q1: float, q3: float, budget: int, bounds=(False, False, False)) -> str:
    """``median [q1, q3]`` of trials-to-target, each as ``ttt_value`` prints it."""
    bm, b1, b3 = bounds or (False, False, False)
    return f"{ttt_value(median, budget, bm)} [{ttt_value(q1, budget, b1)}, {ttt_value(q3, budget, b3)}]"


def ttt_quartiles(ttt: list[int | None], budget: int) -> tuple[tuple[float, float, float], tuple[bool, bool, bool]]:
    """(median, q1, q3) of trials-to-target, studies that never reached the target ranked last
    (as budget + 1, the least their count can be), and for each whether it is only a lower
    bound: a quantile interpolated with such a study (of reached 3 and never-in-4, the median
    reads 4, but that study's true count is unknown and at least 5, so the median is at least 4)."""
    cap = budget + 1
    xs = sorted(t if t is not None else cap for t in ttt)
    vals, bounds = [], []
    for q in (0.5, 0.25, 0.75):
        pos = (len(xs) - 1) * q
        lo, hi = math.floor(pos), math.ceil(pos)
        vals.append(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))
        bounds.append(xs[lo] >= cap or (pos > lo and xs[hi] >= cap))
    return tuple(vals), tuple(bounds)


def method_stats(method: str, studies: list[list[float | None]], target: float, mode: str,
                 floor: float | None = None) -> MethodStats:
    curves = [best_so_far(s, mode) for s in studies]
    budget = max(len(s) for s in studies)
    mean, low, high = mean_band(curves)
    ttt = [trials_to_target(c, target, mode) for c in curves]
    ranked = [t if t is not None else budget + 1 for t in ttt]  # censored studies rank last
    (median, q1, q3), bounds = ttt_quartiles(ttt, budget)
    finals = [c[-1] for c in curves if c and not math.isnan(c[-1])]
    aucs = [auc(c, floor) for c in curves]
    import numpy as np

    blo, bhi = bootstrap_band(curves)
    return MethodStats(method, len(studies), budget, mean, low, high, ttt, median, q1, q3,
                       sum(t is not None for t in ttt), sum(aucs) / len(curves),
                       (max(finals) if mode == "max" else min(finals)) if finals else math.nan,
                       bootstrap_ci(aucs, np.mean), bootstrap_ci([float(t) for t in ranked], np.median),
                       bounds, aucs, blo, bhi)


def bootstrap_band(curves: list[list[float]], level: float = 0.95, n: int = 2000,
                   seed: int = 0) -> tuple[list[float], list[float]]:
    """Per trial index, the percentile-bootstrap interval of the mean curve over studies
    (studies resampled with replacement, whole curves at once; NaN — no value yet — ignored;
    seeded). Unlike the t-band it assumes no normality and never leaves the values' range."""
    import warnings

    import numpy as np

    if not curves:
        return [], []
    width = max(len(c) for c in curves)
    a = np.full((len(curves), width), np.nan)
    for i, c in enumerate(curves):
        a[i, : len(c)] = c
    idx = np.random.default_rng(seed).integers(0, len(curves), size=(n, len(curves)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an index where a resample has no value yet
        means = np.nanmean(a[idx], axis=1)  # [n, width]
        lo, hi = np.nanquantile(means, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return [float(x) for x in lo], [float(x) for x in hi]


def paired_rows(values: dict[str, list[float | None]]) -> list[list[float]]:
    """The repeats where every arm has a finite value: one row per repeat, arms in dict order."""
    n = min((len(v) for v in values.values()), default=0)
    rows = [[values[a][r] for a in values] for r in range(n)]
    return [row for row in rows if all(x is not None and math.isfinite(x) for x in row)]


def paired_test(aucs: dict[str, list[float]], alpha: float = 0.05) -> dict:
    """Arms compared repeat by repeat: repeat r of every arm used the same sampler seed and the
    same data, so per-repeat AUCs are paired. Two arms: Wilcoxon signed-rank on the differences
    (exact for small n; with n pairs the smallest two-sided p is 2/2^n, so 5 repeats can never
    reach 0.05); three or more: Friedman. Repeats where an arm has no AUC are dropped."""
    from scipy import stats

    arms = list(aucs)
    rows = paired_rows(aucs)
    out = {"arms": arms, "n_pairs": len(rows)}
    if len(arms) < 2 or len(rows) < 2:
        return {**out, "test": None, "p_value": None, "verdict": "needs two arms and two paired repeats"}
    if len(arms) == 2:
        diffs = [a - b for a, b in rows]
        out["mean_difference"] = sum(diffs) / len(diffs)  # first arm minus second
        if all(d == 0 for d in diffs):
            return {**out, "test": "identical", "p_value": 1.0, "verdict": "not significant"}
        res, name = stats.wilcoxon([a for a, _ in rows], [b for _, b in rows]), "Wilcoxon signed-rank"
    else:
        if len(rows) < 2 or all(len(set(row)) == 1 for row in rows):
            return {**out, "test": "identical", "p_value": 1.0, "verdict": "not significant"}
        res, name = stats.friedmanchisquare(*zip(*rows)), "Friedman"
    p = float(res.pvalue)
    return {**out, "test": name, "p_value": p, "verdict": "significant" if p < alpha else "not significant"}


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment for a family of tests (it controls the family-wise error
    rate, with no assumption about how the tests depend on each other): the i-th smallest of m
    p-values times (m - i + 1), made non-decreasing, capped at 1. ``None`` (no test) stays None
    and does not count in m."""
    done = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(done):
        running = max(running, min(1.0, (len(done) - rank) * p))
        out[i] = running
    return out


def pairwise_paired(values: dict[str, list[float | None]], mode: str = "max", alpha: float = 0.05) -> list[dict]:
    """Every pair of arms compared repeat by repeat (``paired_test`` with two arms: Wilcoxon
    signed-rank over the repeats where both have a value), the p-values Holm-adjusted over the
    pairs, and the verdict read from the adjusted p. Per pair: ``arms``, ``n_pairs``,
    ``mean_difference`` (first minus second), ``wins`` (repeats where the first is better, by
    ``mode``), ``p_value`` (unadjusted), ``p_holm``, ``verdict``."""
    arms = list(values)
    rows = []
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            pair = {a: values[a], b: values[b]}
            t = paired_test(pair, alpha)
            wins = sum((x > y) if mode == "max" else (x < y) for x, y in paired_rows(pair))
            rows.append({"arms": [a, b], "n_pairs": t["n_pairs"], "mean_difference": t.get("mean_difference"),
                         "wins": wins, "test": t["test"], "p_value": t["p_value"]})
    for r, ph in zip(rows, holm([r["p_value"] for r in rows])):
        r["p_holm"] = ph
        r["verdict"] = ("needs two paired repeats" if ph is None
                        else "significant" if ph < alpha else "not significant")
    return rows


def rank_test(ttts: dict[str, list[int | None]], budget: int, alpha: float = 0.05) -> dict:
    """Is the difference in trials-to-target between methods statistically meaningful?"""
    from scipy import stats

    groups = {m: [t if t is not None else budget + 1 for t in v] for m, v in ttts.items()}
    if len(groups) < 2:
        return {"test": None, "p_value": None, "verdict": "needs two or more methods"}
    data = list(groups.values())
    if all(len(set(g)) == 1 for g in data) and len({g[0] for g in data}) == 1:
        return {"test": "identical", "p_value": 1.0, "verdict": "not significant"}
    if len(groups) == 2:
        res = stats.mannwhitneyu(data[0], data[1], alternative="two-sided")
        name = "Mann-Whitney U"
    else:
        res = stats.kruskal(*data)
        name = "Kruskal-Wallis"
    p = float(res.pvalue)
    return {"test": name, "p_value": p, "verdict": "significant" if p < alpha else "not significant"}
