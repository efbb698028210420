"""`bnnsearch best` on what a study recorded in MLflow (a real SQLite store, runs written as the
study's callback writes them)."""
import json

import pytest

from bnnsearch.best import best_trials
from bnnsearch.errors import UserError
from bnnsearch.tracking import Tracker


def record(tmp_path, trials, objectives=None, finished=None):
    """A finished study whose trials are (objective, status, feasible tag or None); ``finished``:
    each trial's [k/N] index (the order trials finished), tagged as the study's callback tags it."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = Tracker(uri, "exp")
    params = {"metric": "val/acc", "mode": "max", **({"objectives": json.dumps(objectives)} if objectives else {})}
    pid = tr.start_study("s", tags={}, params=params)
    for i, (value, status, feasible) in enumerate(trials):
        rid = tr.start_trial(pid, f"t{i}", f"t{i}", {"method": "latent", "seed": i}, "s")
        tr.log_metric_steps(rid, [({"objective": value}, 1)], tags={
            "bnnsearch.status": status, **({"bnnsearch.feasible": feasible} if feasible is not None else {}),
            **({"bnnsearch.trial_index": finished[i]} if finished else {})})
        tr.log_text(rid, f"seed: {i}\n", "config.yaml")
        tr.finish(rid, "FINISHED")
    tr.finish(pid, "FINISHED")
    return uri


def test_a_trial_over_a_hard_limit_is_never_best(tmp_path):
    uri = record(tmp_path, [(0.99, "complete", 0), (0.9, "complete", 1), (0.95, "stopped early", 1), (0.8, "complete", 1)],
                 objectives=[["val/acc", "max"], ["cost/mem_bits", "min"]])
    rows, cfg, notes = best_trials("s", uri, None, 5)
    assert [r["value"] for r in rows] == pytest.approx([0.9, 0.8]) and cfg == "seed: 1\n"
    assert notes == ["study s has several objectives: ranked here by the first (max val/acc) among its feasible "
                     "trials; its Pareto front is pareto.json (in its --out folder and on its MLflow run) and the "
                     "dashboard's AutoML section"]
    (tmp_path / "b").mkdir()
    uri = record(tmp_path / "b", [(0.99, "complete", 0)])
    with pytest.raises(UserError, match=r"'s' has no complete full-budget trial yet within its hard limits \(1 over them\)"):
        best_trials("s", uri, None, 5)


def test_a_single_objective_study_ranks_its_complete_trials(tmp_path):
    uri = record(tmp_path, [(0.7, "complete", None), (0.9, "complete", None), (0.95, "diverged", None)])
    rows, cfg, notes = best_trials("exp", uri, None, 1)
    assert [r["value"] for r in rows] == pytest.approx([0.9]) and cfg == "seed: 1\n" and notes == []


def test_ties_go_to_the_trial_that_finished_first(tmp_path):
    """As the study's own table ranks them (sweep's summary): of two trials at 0.9 the one that
    finished first ([1/3]) ranks first, whatever order MLflow returns the runs in (newest first)."""
    for finished, first in (([1, 3, 2], "t0"), ([3, 1, 2], "t1")):
        path = tmp_path / first
        path.mkdir()
        uri = record(path, [(0.9, "complete", None), (0.9, "complete", None), (0.5, "complete", None)], finished=finished)
        rows, cfg, _ = best_trials("s", uri, None, 3)
        assert [r["trial"] for r in rows] == [first, {"t0": "t1", "t1": "t0"}[first], "t2"]
        assert cfg == f"seed: {first[1]}\n"


def test_the_studys_own_table_breaks_ties_the_same_way():
    from bnnsearch.sweep import rank_trials

    rows = [{"trial": t, "status": st, "objective": v, "feasible": f}
            for t, st, v, f in (("a", "complete", 0.9, True), ("b", "complete", 0.9, True), ("c", "complete", 0.95, False),
                                ("d", "diverged", 0.99, True), ("e", "complete", 0.5, True))]
    assert [r["trial"] for r in rank_trials(rows, "max", {"a": 4, "b": 2, "e": 1})] == ["b", "a", "e"]
    assert [r["trial"] for r in rank_trials(rows, "min", {"a": 1, "b": 2})] == ["e", "a", "b"]
