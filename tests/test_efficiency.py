"""Aggregation math of `bnnsearch compare` on hand-made study results."""
import json
import math

import pytest

from bnnsearch.efficiency import (auc, best_so_far, mean_band, method_stats, rank_test, target_value,
                                  trials_to_target, ttt_text)


def test_best_so_far_max_min_and_gaps():
    assert best_so_far([0.5, None, 0.4, 0.7, 0.6]) == [0.5, 0.5, 0.5, 0.7, 0.7]
    assert best_so_far([3.0, 2.0, 4.0], mode="min") == [3.0, 2.0, 2.0]
    c = best_so_far([None, 0.2])
    assert math.isnan(c[0]) and c[1] == 0.2


def test_mean_band_is_a_t_interval():
    curves = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    mean, low, high = mean_band(curves)
    assert mean == [3.0, 4.0]
    # sd = 2, n = 3, t_{0.975, 2} = 4.302653 -> half width 4.302653 * 2 / sqrt(3) = 4.968275
    assert high[0] - mean[0] == pytest.approx(4.968275, rel=1e-5)
    assert mean[0] - low[0] == pytest.approx(4.968275, rel=1e-5)


def test_target_and_trials_to_target():
    assert target_value([0.9, 0.93, None], "max", 0.5, "val/acc") == pytest.approx(0.925)
    assert target_value([1.2, 0.8], "min", 0.1, "val/loss") == pytest.approx(0.9)
    curve = best_so_far([0.80, 0.91, 0.90, 0.926, 0.93])
    assert trials_to_target(curve, 0.925, "max") == 4
    assert trials_to_target(curve, 0.95, "max") is None


def test_auc_is_mean_of_the_curve():
    assert auc([0.5, 0.5, 0.8, 1.0]) == pytest.approx(0.7)
    assert math.isnan(auc([math.nan, 1.0]))  # no floor given: undefined
    # A failed first trial: the index before the first value counts as the comparison's floor.
    assert auc([math.nan, 1.0], floor=0.2) == pytest.approx(0.6)
    st = method_stats("m", [[None, 0.9, 0.95], [0.8, 0.9, 0.95]], target=0.9, mode="max", floor=0.5)
    assert math.isfinite(st.auc_mean) and st.auc_mean == pytest.approx(((0.5 + 0.9 + 0.95) + (0.8 + 0.9 + 0.95)) / 6)


def test_method_stats_hand_computed():
    studies = [[0.8, 0.9, 0.95], [0.7, 0.96, 0.96], [0.6, 0.7, 0.8]]
    st = method_stats("m", studies, target=0.95, mode="max")
    assert st.ttt == [3, 2, None]
    # ranked with the censored study at budget + 1 = 4: [3, 2, 4] -> median 3, q1 2.5, q3 3.5
    assert (st.ttt_median, st.ttt_q1, st.ttt_q3) == (3, 2.5, 3.5)
    assert st.reached == 2 and st.best_value == 0.96
    assert st.auc_mean == pytest.approx(((0.8 + 0.9 + 0.95) / 3 + (0.7 + 0.96 + 0.96) / 3 + (0.6 + 0.7 + 0.8) / 3) / 3)
    assert st.mean[0] == pytest.approx(0.7)
    # printed: a value above the 3-trial budget is "not within it", never "4 trials"
    assert ttt_text(st.ttt_median, st.ttt_q1, st.ttt_q3, st.budget) == "3 [2.5, >3]"
    late = method_stats("m", [[0.6, 0.7, 0.96], [0.6, 0.7, 0.8], [0.6, 0.7, 0.8]], target=0.95, mode="max")
    assert ttt_text(late.ttt_median, late.ttt_q1, late.ttt_q3, late.budget) == ">3 [>3, >3]"  # ranked [3, 4, 4]
    # one of two 4-trial studies reached the target at trial 3, the other never: ranked [3, 5],
    # the median interpolates to 4, but the second study's true count is at least 5 (unknown),
    # so the median is at least 4, not 4 trials
    half = method_stats("m", [[0.6, 0.7, 0.96, 0.96], [0.6, 0.7, 0.8, 0.8]], target=0.95, mode="max")
    assert (half.ttt_median, half.ttt_q1, half.ttt_q3) == (4, 3.5, 4.5) and half.ttt_bounds == (True, True, True)
    assert ttt_text(half.ttt_median, half.ttt_q1, half.ttt_q3, half.budget, half.ttt_bounds) == ">=4 [>=3.5, >4]"
    assert st.ttt_bounds == (False, False, True)  # [2, 3, 4]: only q3 leans on the censored study


def test_rank_test_verdicts():
    fast = [2, 3, 2, 3, 2, 3, 2, 2, 3, 2]
    slow = [12, 15, None, 14, 13, None, 16, 12, 15, 14]
    r = rank_test({"a": fast, "b": slow}, budget=25)
    assert r["test"] == "Mann-Whitney U" and r["p_value"] < 0.001 and r["verdict"] == "significant"
    r = rank_test({"a": [3, 5, 4, 6], "b": [4, 5, 3, 6]}, budget=25)
    assert r["verdict"] == "not significant" and r["p_value"] > 0.5
    r = rank_test({"a": fast, "b": slow, "c": fast}, budget=25)
    assert r["test"] == "Kruskal-Wallis" and r["verdict"] == "significant"


def test_incumbent_test_follows_the_validation_pick_not_the_best_test():
    from bnnsearch.efficiency import incumbent_test, test_metric

    vals = [None, 0.80, 0.78, 0.85, 0.85, 0.84]
    tests = [0.10, 0.70, 0.99, 0.75, 0.60, 0.95]  # trial 3 tests best but is never picked
    got = incumbent_test(vals, tests)
    assert math.isnan(got[0]) and got[1:] == [0.70, 0.70, 0.75, 0.75, 0.75]  # ties keep the first pick
    assert incumbent_test([2.0, 1.0, 3.0], [0.5, 0.4, 0.1], mode="min") == [0.5, 0.4, 0.4]
    assert test_metric("val/acc") == "test/acc" and test_metric("cost/ops") is None


def test_bootstrap_intervals():
    import numpy as np

    from bnnsearch.efficiency import bootstrap_ci

    # resamples of {2, 3, 4}: the median is 2 or 4 with probability 7/27 each (> 2.5 %), so the
    # exact 95 % percentile interval is [2, 4]
    assert bootstrap_ci([2.0, 3.0, 4.0], np.median) == (2.0, 4.0)
    assert bootstrap_ci([0.7, 0.7], np.mean) == (0.7, 0.7) and bootstrap_ci([0.5], np.mean) == (0.5, 0.5)
    lo, hi = bootstrap_ci([0.80, 0.85, 0.90, 0.70], np.mean)
    assert 0.70 <= lo < 0.8125 < hi <= 0.90
    assert bootstrap_ci([0.80, 0.85, 0.90, 0.70], np.mean) == (lo, hi)  # seeded: reproducible
    st = method_stats("m", [[0.8, 0.9, 0.95], [0.7, 0.96, 0.96], [0.6, 0.7, 0.8]], target=0.95, mode="max")
    assert st.ttt_median_ci == (2.0, 4.0) and st.auc_ci[0] < st.auc_mean < st.auc_ci[1]


def test_noise_floor_retrains_with_other_seeds_and_warnings_compare_to_it(tmp_path):
    import yaml

    from bnnsearch.compare import noise_floor, noise_warnings

    cfg = yaml.safe_dump({"method": "filtered", "arch": "mlp", "arch_args": {"widths": [16, 16]}, "data": "digits",
                          "epochs": 1, "device": "cpu", "seed": 3, "data_root": str(tmp_path)})
    nf = noise_floor(cfg, "val/acc", 2)
    assert nf["seeds"] == [1003, 2003] and len(nf["values"]) == 2
    assert nf == noise_floor(cfg, "val/acc", 2)  # deterministic on CPU
    assert nf["std"] == pytest.approx(abs(nf["values"][0] - nf["values"][1]) / math.sqrt(2))
    floors = {"a": {"std": 0.01}, "b": {"std": 0.02}}
    # margin 0.005 < sd 0.02; gap 0.03 < 2 * sqrt(0.01^2 + 0.02^2) = 0.0447
    w = noise_warnings(0.005, {"a": 0.90, "b": 0.93}, floors)
    assert len(w) == 2 and "target margin (0.005)" in w[0] and "1 of 1 pairs" in w[1] and "a ~ b (0.03 < 0.0447)" in w[1]
    assert noise_warnings(0.05, {"a": 0.88, "b": 0.93}, floors) == []  # 0.05 > 0.0447: apart
    floors["c"] = {"std": 0.0}
    w = noise_warnings(0.05, {"a": 0.88, "b": 0.93, "c": 0.925}, floors)  # b ~ c only: 0.005 < 0.04
    assert w == ["1 of 3 pairs of arms have best values closer than twice the seed-to-seed spread of their "
                 "difference: b ~ c (0.005 < 0.04)"]


def test_noise_floor_cache_keeps_each_retraining_by_config_seed_and_metric(tmp_path, monkeypatch):
    """A saved re-training is reused only for the same configuration text, seed and metric; an
    unreadable cache is a clear error naming the file."""
    import bnnsearch.engine
    import yaml
    from bnnsearch.compare import noise_floor
    from bnnsearch.errors import UserError

    cfg = yaml.safe_dump({"method": "filtered", "arch": "mlp", "arch_args": {"widths": [16, 16]}, "data": "digits",
                          "epochs": 1, "device": "cpu", "seed": 3, "data_root": str(tmp_path)})
    cache = tmp_path / "nf.json"
    fit, seeds = bnnsearch.engine.fit, []
    monkeypatch.setattr(bnnsearch.engine, "fit", lambda c: seeds.append(c.seed) or fit(c))
    nf = noise_floor(cfg, "val/acc", 2, cache=cache)
    assert seeds == [1003, 2003] and nf == noise_floor(cfg, "val/acc", 2, cache=cache) and seeds == [1003, 2003]
    assert noise_floor(cfg, "val/acc", 3, cache=cache)["values"][:2] == nf["values"] and seeds[2:] == [3003]
    noise_floor(cfg, "val/loss", 2, cache=cache)  # another metric: trained again
    noise_floor(cfg.replace("epochs: 1", "epochs: 2"), "val/acc", 2, cache=cache)  # another config: trained again
    assert seeds[3:] == [1003, 2003, 1003, 2003] and len(json.loads(cache.read_text())) == 7
    cache.write_text("{not json")
    with pytest.raises(UserError, match="nf.json: cannot read the saved noise-floor re-trainings"):
        noise_floor(cfg, "val/acc", 2, cache=cache)


def test_cost_to_target_sums_the_cost_of_the_trials_it_took():
    from bnnsearch.efficiency import cost_to_target

    vals, secs = [0.5, None, 0.93, 0.95], [2.0, 7.0, 3.0, 1.0]
    assert cost_to_target(vals, secs, 0.925, "max") == 12.0  # trials 1-3, the failed one included
    assert cost_to_target(vals, secs, 0.99, "max") is None
    assert cost_to_target([3.0, 1.0], [5.0, None], 2.0, "min") == 5.0


def test_asha_rungs_and_their_rank_correlation_with_the_final_value():
    from bnnsearch.efficiency import asha_rungs, rung_correlations

    assert asha_rungs(10) == [1, 3, 9] and asha_rungs(3) == [1] and asha_rungs(1) == []
    same = [{1: 0.1 * i, 3: 0.2 * i, 9: 0.3 + i, 10: float(i)} for i in range(5)]  # same order at every rung
    got = rung_correlations(same, [1, 3, 9], 10)
    assert all(got[r]["spearman"] == pytest.approx(1.0) and got[r]["n"] == 5 for r in (1, 3, 9))
    flipped = [{1: -float(i), 10: float(i)} for i in range(4)]
    assert rung_correlations(flipped, [1], 10)[1]["spearman"] == pytest.approx(-1.0)
    assert rung_correlations(same[:2], [1], 10)[1] == {"n": 2, "spearman": None}  # too few trials


def test_gap_target_closes_a_fraction_of_the_gap_from_random_to_the_best_arm():
    from bnnsearch.efficiency import gap_target

    per_arm = {"a": [[0.5, 0.8, 0.9], [0.6, 0.7, 0.95], [0.4, 0.9, 0.85]],  # finals 0.9, 0.95, 0.9 -> median 0.9
               "b": [[0.3, 0.6], [0.7, 0.72]]}                              # finals 0.6, 0.72 -> median 0.66
    t, info = gap_target(per_arm, "max", 0.5)
    # random: median of the first trials [0.5, 0.6, 0.4, 0.3, 0.7] = 0.5; best arm a (0.9)
    assert info["random_median"] == 0.5 and info["best_arm"] == "a" and t == pytest.approx(0.5 + 0.5 * 0.4)
    t_min, info_min = gap_target({"a": [[3.0, 1.0]], "b": [[2.0, 2.0]]}, "min", 1.0)
    assert info_min["best_arm"] == "a" and t_min == pytest.approx(1.0)
    # the random baseline is every study's startup (random) trials; pruned first trials are skipped
    _, info2 = gap_target({"a": [[None, 0.2, 0.9], [None, None, 0.8]]}, "max", 0.5, startup=2)
    assert info2["random_median"] == 0.2
    _, info3 = gap_target({"a": [[None, 0.2, 0.9], [None, None, 0.8]]}, "max", 0.5, startup=1)
    assert info3["random_median"] == pytest.approx(0.5)  # no valued startup trial: first values 0.2, 0.8


def test_own_gap_target_judges_each_method_against_its_own_random_configs_and_plateau():
    from bnnsearch.efficiency import own_gap_ttt

    per_arm = {"a": [[0.5, 0.8, 0.9], [0.6, 0.7, 0.95], [0.4, 0.9, 0.85]],  # firsts 0.5 0.6 0.4; finals .9 .95 .9
               "a@random": [[0.5, 0.6, 0.65], [0.6, 0.6, 0.8]],              # firsts 0.5 0.6; finals .65 .8
               "b": [[0.3, 0.6], [0.2, 0.72]],                               # firsts 0.3 0.2; finals 0.6 0.72
               "flat": [[0.5, 0.4], [0.5, 0.5]]}                            # plateau 0.5 = random: no gap
    own = own_gap_ttt(per_arm, "max", 0.5, startup=1)
    assert set(own) == {"a", "a@random", "b"}
    # a and a@random share one target: random median of 0.5 0.6 0.4 0.5 0.6 = 0.5, plateau = a's 0.9 -> 0.7
    assert own["a"]["target"] == own["a@random"]["target"] == pytest.approx(0.7) and own["a"]["plateau_arm"] == "a"
    assert own["a"]["ttt"] == [2, 2, 2] and own["a"]["median"] == 2 and own["a@random"]["ttt"] == [None, 3]
    # b: random median 0.25, plateau median 0.66 -> 0.455: trials 2, 2
    assert own["b"]["target"] == pytest.approx(0.455) and own["b"]["ttt"] == [2, 2] and own["b"]["reached"] == 2
    own_min = own_gap_ttt({"m": [[3.0, 1.0], [3.0, 3.0]]}, "min", 1.0)  # plateau median 2.0: reached once
    assert own_min["m"]["target"] == pytest.approx(2.0) and own_min["m"]["ttt"] == [2, None]

def test_bootstrap_band_of_the_mean_curve():
    import numpy as np

    from bnnsearch.efficiency import bootstrap_band

    lo, hi = bootstrap_band([[0.5, 0.6, 0.7]] * 4)  # identical studies: no spread
    assert lo == hi == [0.5, 0.6, 0.7]
    curves = [[0.1, 0.5], [0.3, 0.5], [0.2, float("nan")], [0.6, 0.9]]
    lo, hi = bootstrap_band(curves, n=4000, seed=1)
    # against a direct resampling of the same seed, and inside the values' range
    a = np.array(curves)
    idx = np.random.default_rng(1).integers(0, 4, size=(4000, 4))
    means = np.nanmean(a[idx], axis=1)
    want = np.nanquantile(means, [0.025, 0.975], axis=0)
    assert lo == pytest.approx(list(want[0])) and hi == pytest.approx(list(want[1]))
    assert 0.1 <= lo[0] <= hi[0] <= 0.6 and 0.5 <= lo[1] <= hi[1] <= 0.9


def test_paired_test_by_repeat():
    from bnnsearch.efficiency import paired_test

    # six repeats, arm a better in every one: exact Wilcoxon two-sided p = 2 / 2^6
    r = paired_test({"a": [0.9, 0.8, 0.85, 0.7, 0.95, 0.6], "b": [0.8, 0.75, 0.8, 0.6, 0.9, 0.55]})
    assert r["test"] == "Wilcoxon signed-rank" and r["p_value"] == pytest.approx(2 / 64) and r["verdict"] == "significant"
    assert r["mean_difference"] == pytest.approx(0.4 / 6) and r["n_pairs"] == 6
    # four repeats can never reach 0.05 (smallest p = 2/16), and the test says so by its p
    assert paired_test({"a": [1, 2, 3, 4], "b": [0, 1, 2, 3]})["p_value"] == pytest.approx(0.125)
    assert paired_test({"a": [1, 2], "b": [1, 2]})["test"] == "identical"
    # a repeat without a value is dropped from every arm; three arms: Friedman
    r3 = paired_test({"a": [3, 3, 3, None], "b": [2, 2, 2, 1], "c": [1, 1, 1, 1]})
    assert r3["test"] == "Friedman" and r3["n_pairs"] == 3
    assert paired_test({"a": [1.0]})["test"] is None


def test_arm_styles_tell_arms_apart():
    from bnnsearch.colors import arm_styles, method_color

    s = arm_styles(["latent", "filtered", "latent@random", "filtered@random"])
    assert s["latent"] == (method_color("latent"), False) and s["latent@random"] == (method_color("latent"), True)
    one = arm_styles(["automl@tpe", "automl@tpe-flat"])  # one method, two samplers: two colours, solid
    assert one["automl@tpe"][0] != one["automl@tpe-flat"][0] and not any(d for _, d in one.values())
    from bnnsearch.searcher import SAMPLERS

    every = arm_styles([f"automl@{s}" for s in SAMPLERS if s != "random"])  # bandit and tpe-cover shared one
    assert len({c for c, _ in every.values()}) == len(SAMPLERS) - 1, every
    packs = arm_styles(["latent@pack1", "latent@pack8", "latent@random"])  # compare --packs: three styles
    assert len(set(packs.values())) == 3 and packs["latent@random"] == (method_color("latent"), True)
    two = arm_styles(["latent@tpe", "latent@gp", "filtered@tpe", "filtered@gp"])  # by method, then dash
    assert two["latent@tpe"] == (method_color("latent"), False) and two["latent@gp"] == (method_color("latent"), True)
    # named spaces (``name:``) of one method: a colour each (their hashed colours collide), their
    # random arms dashed in it; a registry method beside them keeps its own
    named = arm_styles(["latent-3hp", "latent-lr", "latent-3hp@random", "latent-lr@random", "filtered", "pc-only"])
    assert method_color("latent-3hp") == method_color("latent-lr")  # what the test guards against
    solid = [named[a][0] for a in ("latent-3hp", "latent-lr", "filtered", "pc-only")]
    assert len(set(solid)) == 4 and named["filtered"][0] == method_color("filtered")
    assert named["latent-lr@random"] == (named["latent-lr"][0], True)


def test_measured_cost_to_target_is_unknown_when_a_trained_trial_did_not_record_it():
    from bnnsearch.compare import measured_cost_to_target

    values = [[0.5, 0.9, 0.7], [0.2, 0.3, 0.4]]  # target 0.8: study 0 at trial 2, study 1 never
    cpu, wall = [[2.0, 3.0, 4.0], [1.0, 1.0, 1.0]], [[1.0, 1.5, 2.0], [0.5, 0.5, 0.5]]
    assert measured_cost_to_target(values, cpu, wall, 0.8, "max") == [5.0, None]
    failed = [[None, 0.9, 0.7], values[1]]  # a trial that failed before training: no cost, counts 0
    assert measured_cost_to_target(failed, [[None, 3.0, 4.0], cpu[1]], [[None, 1.5, 2.0], wall[1]], 0.8, "max") == [
        3.0, None]
    # a trial that trained (wall seconds) without CPU seconds: the whole arm is unknown, not 0
    assert measured_cost_to_target(values, [[2.0, 3.0, 4.0], [1.0, None, 1.0]], wall, 0.8, "max") is None


def test_holm_adjustment_hand_computed():
    from bnnsearch.efficiency import holm

    # m = 4: sorted 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06 (kept non-decreasing), 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([None, 0.01, None]) == [None, 0.01, None]  # no test: not in the family (m = 1)


def test_pairwise_paired_wilcoxon_per_pair_then_holm():
    from scipy import stats

    from bnnsearch.efficiency import pairwise_paired

    a = [0.9, 0.8, 0.85, 0.7, 0.95, 0.6]
    b = [0.8, 0.75, 0.8, 0.6, 0.9, 0.55]  # a better in all 6 repeats: exact p = 2 / 64
    c = [0.85, 0.85, 0.7, 0.65, 0.99, 0.5]
    rows = pairwise_paired({"a": a, "b": b, "c": c})
    assert [r["arms"] for r in rows] == [["a", "b"], ["a", "c"], ["b", "c"]]
    ab, ac, bc = rows
    assert ab["p_value"] == pytest.approx(2 / 64) and ab["wins"] == 6 and ab["n_pairs"] == 6
    assert ab["mean_difference"] == pytest.approx(sum(x - y for x, y in zip(a, b)) / 6)
    assert ac["p_value"] == pytest.approx(stats.wilcoxon(a, c).pvalue)
    assert ac["wins"] == sum(x > y for x, y in zip(a, c)) and bc["wins"] == sum(x > y for x, y in zip(b, c))
    raw = sorted(r["p_value"] for r in rows)
    assert ab["p_holm"] == pytest.approx(min(1, 3 * raw[0]))  # the smallest, times m = 3
    assert ab["verdict"] == "not significant"  # 0.031 alone, 0.094 after Holm over three pairs
    # "better" follows the mode; a repeat without a value drops out of that pair only
    lo = pairwise_paired({"a": [1.0, 2.0, None], "b": [2.0, 3.0, 1.0]}, mode="min")
    assert lo[0]["wins"] == 2 and lo[0]["n_pairs"] == 2
    one = pairwise_paired({"a": [1.0, None], "b": [2.0, 3.0]})
    assert one[0]["p_holm"] is None and one[0]["verdict"] == "needs two paired repeats"
