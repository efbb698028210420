"""`bnnsearch best` on what a study recorded in MLflow (a real SQLite store, runs written as the
study's callback writes them)."""
import json

import pytest

from bnnsearch.best import best_trials
from bnnsearch.errors import UserError
from bnnsearch.tracking import Tracker


def record(tmp_path, trials, objectives=None):
    """A finished study whose trials are (objective, status, feasible tag or None)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = Tracker(uri, "exp")
    params = {"metric": "val/acc", "mode": "max", **({"objectives": json.dumps(objectives)} if objectives else {})}
    pid = tr.start_study("s", tags={}, params=params)
    for i, (value, status, feasible) in enumerate(trials):
        rid = tr.start_trial(pid, f"t{i}", f"t{i}", {"method": "latent", "seed": i}, "s")
        tr.log_metric_steps(rid, [({"objective": value}, 1)], tags={
            "bnnsearch.status": status, **({"bnnsearch.feasible": feasible} if feasible is not None else {})})
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
