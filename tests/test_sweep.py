"""End-to-end studies with the real components: Ray Tune (local, 2 CPUs), Optuna and BoTorch
samplers, MLflow (SQLite). Small trainables: a tiny MLP on sklearn digits."""
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from _proc import read_until, start_cli

pytestmark = pytest.mark.slow

FIXED = {"arch": "mlp", "arch_args": {"widths": [16, 16, 16]}, "data": "digits", "epochs": 2, "batch_size": 64,
         "device": "cpu"}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def space_file(tmp_path, params, fixed=None, method="filtered", name="space.yaml"):
    fixed = {**FIXED, "data_root": str(tmp_path / "data"), **(fixed or {})}
    searched = {n.split(".")[0] for n in params}  # a searched key is not fixed too (refused)
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"method": method, "objective": {"metric": "val/acc", "mode": "max"},
                                 "fixed": {k: v for k, v in fixed.items() if k not in searched}, "params": params}))
    return p


ALPHA = {"alpha": {"float": [1e-4, 1e-1], "log": True}, "gamma": {"float": [0.01, 1.0], "log": True}}


def sweep(tmp_path, space, **kw):
    from bnnsearch.spaces import load_space
    from bnnsearch.sweep import SweepArgs, run_sweep

    args = SweepArgs(space=load_space(space), storage=str(tmp_path / "runs"), quiet=True,
                     tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", **kw)
    return run_sweep(args)


def mlflow_runs(tmp_path, summary):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    e = c.get_experiment_by_name(summary["experiment"])
    kids = c.search_runs([e.experiment_id], f"tags.`mlflow.parentRunId` = '{summary['parent_run_id']}'")
    return c, c.get_run(summary["parent_run_id"]), kids


def _twice(tmp_path, **kw):
    """The child runs of the same study command run twice (two names, one store)."""
    sp = space_file(tmp_path, ALPHA)
    return [mlflow_runs(tmp_path, sweep(tmp_path, sp, trials=5, seed=3, name=name, **kw))[2]
            for name in ("first", "second")]


def test_one_trial_at_a_time_a_model_based_study_repeats_exactly(ray_local, tmp_path):
    """README "Repeatability": with --concurrency 1 the same command proposes the same
    configurations in the same order and records the same values (TPE after 2 random trials,
    so the model's proposals depend on the recorded values)."""
    seqs = [sorted((int(k.data.tags["bnnsearch.trial_index"]), k.data.params["hparams.alpha"],
                    k.data.params["hparams.gamma"], k.data.metrics["objective"]) for k in kids)
            for kids in _twice(tmp_path, sampler="tpe", startup_trials=2, concurrency=1)]
    assert len(seqs[0]) == 5 and len({a for _, a, _, _ in seqs[0]}) == 5
    assert seqs[0] == seqs[1]


def test_two_trials_at_a_time_random_search_draws_the_same_configurations(ray_local, tmp_path):
    """README "Repeatability": random search's draws do not depend on results, so with trials
    finishing in any order two runs try the same configurations with the same values."""
    sets = [sorted((k.data.params["hparams.alpha"], k.data.params["hparams.gamma"], k.data.metrics["objective"])
                   for k in kids) for kids in _twice(tmp_path, sampler="random", concurrency=2)]
    assert len({a for a, _, _ in sets[0]}) == 5
    assert sets[0] == sets[1]


@pytest.mark.parametrize("sampler", ["random", "tpe", "gp", "botorch"])
def test_every_sampler_runs_a_recorded_study(ray_local, tmp_path, sampler, monkeypatch):
    from bnnsearch import sweep as sw
    from bnnsearch.results import earlier_results

    # Reports at most every 60 s (the driver passes REPORT_S to its trials): a trial holds epoch 1
    # back whatever the machine's speed (at the default 2 s a cold worker's first epoch, with its
    # data, model and imports, can take longer and then reports on its own: seen in a CI run).
    monkeypatch.setattr(sw, "REPORT_S", 60.0)
    s = sweep(tmp_path, space_file(tmp_path, ALPHA), trials=5, sampler=sampler, startup_trials=2)
    assert s["counts"] == {"complete": 5, "stopped early": 0, "diverged": 0, "failed": 0}
    assert s["sampler_states"] == {"COMPLETE": 5}
    c, parent, kids = mlflow_runs(tmp_path, s)
    assert parent.data.tags["sampler"] == sampler and parent.info.status == "FINISHED"
    assert len(kids) == 5 and all(k.info.status == "FINISHED" for k in kids)
    assert all(k.data.params["hparams.alpha"] and k.data.metrics["epoch"] == 2 for k in kids)
    curve = [m.value for m in sorted(c.get_metric_history(parent.info.run_id, "best_so_far"), key=lambda m: m.step)]
    assert len(curve) == 5 and curve == sorted(curve) and curve[-1] == max(k.data.metrics["objective"] for k in kids)
    names = {a.path for a in c.list_artifacts(kids[0].info.run_id)}
    assert {"config.yaml", "cost.json"} <= names
    # the paper default (alpha 1e-3, gamma 0.1) is the first trial
    assert any(k.data.params["hparams.alpha"] == "0.001" and k.data.params["hparams.gamma"] == "0.1" for k in kids)
    # records that read well: names tell runs apart, static cost once, best value a metric, artifacts beside the db
    assert parent.info.run_name == f"filtered {sampler} s0"
    assert sorted(k.info.run_name for k in kids) == [f"filtered t{i:02d}" for i in range(1, 6)]
    assert [m.step for m in c.get_metric_history(kids[0].info.run_id, "cost/bops")] == [1]
    assert sorted(m.step for m in c.get_metric_history(kids[0].info.run_id, "val/acc")) == [1, 2]
    assert parent.data.metrics["best_value"] == curve[-1] and parent.data.tags["bnnsearch.status"] == "finished"
    assert kids[0].info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    # Ray's snapshot keeps running statistics of the numbers a trial reports, re-encoded on
    # every result: the metrics travel as one string (sweep.trial_metrics), and all reach MLflow
    (f,) = Path(s["storage"]).glob("experiment_state-*.json")
    for _, meta in json.loads(f.read_bytes())["trial_data"]:
        meta = json.loads(meta)
        assert "objective" in meta["metric_analysis"] and "train/loss" not in meta["metric_analysis"]
        assert "train/loss" in json.loads(meta["last_result"]["metrics"])
        # a trial reports once (trial._Sender holds epoch 1 back), and MLflow still has both epochs
        last = meta["last_result"]
        assert last["training_iteration"] == 1 and last["epoch"] == 2
        assert [e["epoch"] for e in earlier_results(last)] == [1]
    assert all(sorted(m.step for m in c.get_metric_history(k.info.run_id, "train/loss")) == [1, 2] for k in kids)
    assert all({"bin/flip_ratio", "test/acc", "time/epoch_s"} <= set(k.data.metrics) for k in kids)


def test_a_conditional_space_runs_a_recorded_study(ray_local, tmp_path):
    """The define-by-run space goes into Ray's experiment snapshot with the searcher (it was a
    closure once: every conditional study crashed at its first snapshot)."""
    params = {"pair": {"categorical": ["bnn", "pc"]}, "mu0": {"float": [0.5, 5.0], "when": {"pair": ["pc"]}},
              "lr": {"float": [1e-3, 1e-1], "log": True}}
    path = tmp_path / "cond.yaml"  # declaration order matters (a condition names a parameter above it)
    path.write_text(yaml.safe_dump({"method": "proxconnect", "fixed": {**FIXED, "data_root": str(tmp_path / "data")},
                                    "params": params}, sort_keys=False))
    s = sweep(tmp_path, path, trials=4, sampler="tpe", startup_trials=2)
    assert s["counts"]["complete"] == 4
    _, _, kids = mlflow_runs(tmp_path, s)
    assert len(kids) == 4 and {k.data.params["hparams.pair"] for k in kids} <= {"bnn", "pc"}


def test_a_space_whose_fixed_part_fails_with_the_method_defaults_runs(ray_local, tmp_path):
    """local_binary's default group size (105) does not divide a width of 16; every searched
    group size does. The study reads what the fixed part holds (the epochs) from a config a
    trial can have, not from the defaults (it stopped with 'group_size 105 must divide' once),
    and does not enqueue the defaults as its first trial."""
    params = {"group_size": {"categorical": [4, 8]}, "robustness": {"float": [0.0, 1.0]}}
    path = space_file(tmp_path, params, {"arch": "local_mlp", "arch_args": {"widths": [16, 16]}, "epochs": 1},
                      method="local_binary")
    s = sweep(tmp_path, path, trials=2, sampler="random")
    assert s["counts"] == {"complete": 2, "stopped early": 0, "diverged": 0, "failed": 0}
    _, _, kids = mlflow_runs(tmp_path, s)
    assert {k.data.params["hparams.group_size"] for k in kids} <= {"4", "8"} and len(kids) == 2


def test_asha_stops_trials_and_tells_them_pruned(ray_local, tmp_path):
    s = sweep(tmp_path, space_file(tmp_path, ALPHA, {"epochs": 4}), trials=9, sampler="random", scheduler="asha")
    n = s["counts"]
    assert n["stopped early"] > 0 and n["complete"] > 0 and n["complete"] + n["stopped early"] == 9
    assert s["sampler_states"].get("PRUNED", 0) == n["stopped early"]
    assert s["sampler_states"].get("COMPLETE", 0) == n["complete"]
    _, parent, kids = mlflow_runs(tmp_path, s)
    stopped = [k for k in kids if k.data.tags.get("bnnsearch.status") == "stopped early"]
    assert len(stopped) == n["stopped early"] and all(k.data.metrics["epoch"] < 4 for k in stopped)


def test_diverging_trials_are_recorded_and_the_study_goes_on(ray_local, tmp_path):
    params = {"fp_lr": {"categorical": [1e-3, 1e38]}}
    s = sweep(tmp_path, space_file(tmp_path, params, {"hparams": {"fp_optimizer": "sgd"}}), trials=4, sampler="random",
              seed=3)
    assert s["counts"]["diverged"] >= 1 and s["counts"]["diverged"] + s["counts"]["complete"] == 4
    _, _, kids = mlflow_runs(tmp_path, s)
    div = [k for k in kids if k.data.tags.get("diverged") == "1"]
    assert div and all(k.data.metrics["objective"] == 0.0 for k in div)
    assert all(k.data.params["hparams.fp_lr"] == "1e+38" for k in div)


def test_failing_trials_are_marked_failed_and_the_study_finishes(ray_local, tmp_path):
    good = tmp_path / "good.npz"
    rng = np.random.default_rng(0)
    np.savez(good, x=rng.normal(size=(200, 8)), y=rng.integers(0, 3, 200))
    params = {"data_root": {"categorical": [str(good), str(tmp_path / "missing.npz")]}}
    s = sweep(tmp_path, space_file(tmp_path, params, {"data": "npz", "arch_args": {"widths": [8, 8, 8]}}),
              trials=6, sampler="random", seed=1, max_failures=1)
    assert s["counts"]["failed"] >= 1 and s["counts"]["complete"] >= 1
    assert s["counts"]["failed"] + s["counts"]["complete"] == 6
    _, _, kids = mlflow_runs(tmp_path, s)
    failed = [k for k in kids if k.info.status == "FAILED"]
    assert len(failed) == s["counts"]["failed"]
    assert all("missing.npz" in k.data.params["data_root"] for k in failed)
    assert all("does not exist" in k.data.tags["error"] for k in failed)


def test_best_reproduces_the_trial(ray_local, tmp_path):
    from bnnsearch.best import best_trials
    from bnnsearch.config import load_config
    from bnnsearch.engine import fit

    s = sweep(tmp_path, space_file(tmp_path, ALPHA), trials=3, sampler="random", name="repro")
    rows, text, notes = best_trials("repro", f"sqlite:///{tmp_path}/mlflow.db", None, 3)
    assert notes == []  # a finished study
    assert rows[0]["value"] == max(r["value"] for r in rows) == s["top"][0]["objective"]
    p = tmp_path / "best.yaml"
    p.write_text(text)
    again = fit(load_config(p)).final
    assert again["val/acc"] == rows[0]["value"]


def test_existing_study_needs_resume_and_resume_needs_a_study(ray_local, tmp_path):
    from bnnsearch.errors import UserError

    sp = space_file(tmp_path, ALPHA)
    with pytest.raises(UserError, match="no study 'x' to resume"):
        sweep(tmp_path, sp, trials=1, name="x", resume=True)
    sweep(tmp_path, sp, trials=1, name="y")
    with pytest.raises(UserError, match="already exists"):
        sweep(tmp_path, sp, trials=1, name="y")


def _kept_copy_names_a_running_checkpoint(exp_dir, epochs: int) -> bool:
    """Whether the snapshot copy bnnsearch keeps (bnnsearch_state/) of this session names a
    checkpoint of a trial that is running mid-way (reported, not past epochs - 1): a resume
    after a kill from here on continues that trial from a checkpoint, whenever the kill falls
    (Ray's own snapshot in the folder may lag or be cut short), so a test that kills a study
    to check that can wait for this instead of guessing a delay."""
    try:
        (f,) = (exp_dir / "bnnsearch_state").glob("experiment_state-*.json")
        if f.name != max(p.name for p in exp_dir.glob("experiment_state-*.json")):
            return False  # a copy from an earlier session (before a resume)
        trials = json.loads(f.read_bytes())["trial_data"]
    except (OSError, ValueError, KeyError):  # not there yet, or being swapped in
        return False
    for state, meta in trials:
        meta = json.loads(meta)
        manager = meta.get("checkpoint_manager", {}).get("value", "")
        done = (meta.get("last_result") or {}).get("training_iteration") or 0
        if json.loads(state).get("status") == "RUNNING" and 0 < done < epochs - 1 and b"checkpoint_0" in bytes.fromhex(manager):
            return True
    return False


def _kill_at(args, cwd, marker, timeout=240, exp_dir=None, epochs=6):
    """Start the CLI, SIGKILL it (the driver and its Ray) once it printed marker and, given the
    study's folder, once a checkpoint of a trial running mid-way is in the kept snapshot copy."""
    proc = start_cli(args, cwd)
    seen = read_until(proc, marker, timeout)
    deadline = time.time() + 120
    while exp_dir is not None and not _kept_copy_names_a_running_checkpoint(exp_dir, epochs) and time.time() < deadline:
        time.sleep(0.05)
    if exp_dir is None:
        time.sleep(0.7)  # let the running trials report an epoch or two past the marker
    else:
        assert _kept_copy_names_a_running_checkpoint(exp_dir, epochs), "no running trial's checkpoint reached the snapshot"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    time.sleep(2)
    return "".join(seen)


def _resume_and_check_the_record(tmp_path, args, n, epochs=6):
    """Resume to the end; the record is whole: N child runs, each config sampled once, every epoch
    recorded once, the parent's steps 1..N exactly once with a non-decreasing best-so-far, and
    what compare/dashboard read equals the trials' values. Returns the child runs and the output."""
    done = subprocess.run([sys.executable, "-m", "bnnsearch.cli", *args, "--resume"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    from bnnsearch.tracking import study_values

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    e = c.get_experiment_by_name("bnnsearch/digits/mlp")
    kids = c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'trial'")
    assert not c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'lost_trial'")
    assert len(kids) == n, [k.data.tags for k in kids]  # no trial lost, none re-sampled into a new run
    configs = {(k.data.params["hparams.alpha"], k.data.params["hparams.gamma"]) for k in kids}
    assert len(configs) == n
    assert all(k.info.status == "FINISHED" for k in kids)
    for k in kids:  # every epoch recorded once
        steps = [m.step for m in c.get_metric_history(k.info.run_id, "epoch")]
        assert sorted(steps) == list(range(1, epochs + 1)), (k.data.tags["bnnsearch.trial_id"], steps)
    (parent,) = c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'study'")
    pid = parent.info.run_id
    states = sorted(m.step for m in c.get_metric_history(pid, "trial_state"))
    assert states == list(range(1, n + 1)), states  # steps 1..N exactly once
    best = [m.value for m in sorted(c.get_metric_history(pid, "best_so_far"), key=lambda m: m.step)]
    assert len(best) == n and best == sorted(best)
    by_index = {int(k.data.tags["bnnsearch.trial_index"]): float(k.data.tags["bnnsearch.trial_value"]) for k in kids}
    assert sorted(by_index) == list(range(1, n + 1))
    assert study_values(c, pid) == [by_index[i] for i in range(1, n + 1)]  # what compare/dashboard read
    return kids, done.stdout + done.stderr


def test_resume_after_two_sigkills_keeps_the_record_whole(tmp_path):
    """Kill the driver twice while trials run, resume: the parent's per-trial record holds steps
    1..N exactly once with a non-decreasing best-so-far, no trial is lost or re-sampled (N child
    runs, each config sampled once, every epoch recorded once), and with --checkpoint-s 0 a
    killed trial continues from its last checkpointed epoch."""
    sp = space_file(tmp_path, ALPHA, {"epochs": 6, "batch_size": 16})
    n = 6
    args = ["sweep", str(sp), "--trials", str(n), "--sampler", "tpe", "--startup-trials", "2", "--name", "killme",
            "--concurrency", "2", "--checkpoint-s", "0"]
    # Each kill waits for a running trial's mid-way checkpoint in the kept snapshot (not a fixed
    # delay: on an idle machine trials end within a second, and a resumed run's first progress line
    # may be any index), so a trial is always cut mid-way and resumed from its checkpoint.
    exp = tmp_path / "bnnsearch_runs" / "killme"
    _kill_at(args, tmp_path, "[1/6]", exp_dir=exp)
    _kill_at([*args, "--resume"], tmp_path, "[", exp_dir=exp)  # its first progress line "[k/6] ..."
    kids, _ = _resume_and_check_the_record(tmp_path, args, n)
    resumed = [int(k.data.tags["bnnsearch.resumed_from_epoch"]) for k in kids if "bnnsearch.resumed_from_epoch" in k.data.tags]
    assert resumed and all(0 < r < 6 for r in resumed), "no killed trial continued from its checkpoint"
    subprocess.run(["pkill", "-9", "-f", str(tmp_path)], check=False)


def test_a_counted_run_left_running_by_a_kill_is_ended_on_resume_and_kept_by_an_interrupt(tmp_path):
    """A trial's end is one request (metrics, status and index tags), then the run marked ended,
    then the parent's step. A kill between the first two leaves a counted run RUNNING: the
    resumed callback ends it with its own status and writes the missing step; an interrupt ends
    it likewise and labels only the uncounted running run interrupted."""
    from bnnsearch.spaces import load_space
    from bnnsearch.record import MlflowCallback
    from bnnsearch.sweep import SweepArgs, _interrupted
    from bnnsearch.tracking import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = SweepArgs(space=load_space(space_file(tmp_path, ALPHA)), trials=3, quiet=True, tracking_uri=uri)
    tr = Tracker(uri, "e")
    parent = tr.start_study("s", tags={}, params={})
    counted, stopped, running = (tr.start_trial(parent, f"t{i}", f"t{i}", {"method": "filtered"}, "s") for i in range(3))
    tr.set_tags(counted, {MlflowCallback.INDEX: 1, MlflowCallback.VALUE: 0.75, "bnnsearch.status": "complete"})
    MlflowCallback(args, parent, uri, tr)  # what a resumed study builds
    assert tr.client.get_run(counted).info.status == "FINISHED"
    assert tr.steps(parent, "trial_value") == {1: 0.75} and tr.steps(parent, "trial_state") == {1: 1.0}
    tr.set_tags(stopped, {MlflowCallback.INDEX: 2, MlflowCallback.VALUE: "", "bnnsearch.status": "stopped early"})
    _interrupted(tr, parent, args, "s")
    runs = {r: tr.client.get_run(r) for r in (counted, stopped, running)}
    assert [(runs[r].info.status, runs[r].data.tags["bnnsearch.status"]) for r in (counted, stopped, running)] == [
        ("FINISHED", "complete"), ("KILLED", "stopped early"), ("KILLED", "interrupted")]


def test_a_snapshot_set_that_does_not_read_back_or_disagrees_is_replaced_by_the_kept_copy(tmp_path):
    """Unit: Ray's newest snapshot set (experiment_state JSON, searcher pickles of the same
    session) is kept when it reads back, its searcher generated as many trials as its trial
    list holds and the kept copy of the same session got no further; otherwise it is replaced
    by the whole copy (or removed when there is none)."""
    import pickle

    from bnnsearch.raystate import repair_snapshot

    def write_set(folder, session, n_trials, counter, iters=None):
        folder.mkdir(parents=True, exist_ok=True)
        meta = [json.dumps({"last_result": {"training_iteration": i}} if iters else {}) for i in (iters or [0] * n_trials)]
        (folder / f"experiment_state-{session}.json").write_text(json.dumps({"trial_data": [["{}", m] for m in meta]}))
        (folder / f"search_gen_state-{session}.json").write_bytes(pickle.dumps({"counter": counter}))
        (folder / f"searcher-state-{session}.pkl").write_bytes(pickle.dumps({"study": n_trials}))

    exp = tmp_path / "exp"
    write_set(exp, "2026-01-01_00-00-02", 3, 3)
    write_set(exp / "bnnsearch_state", "2026-01-01_00-00-01", 2, 2)
    assert not repair_snapshot(exp)  # whole and consistent: left alone
    write_set(exp, "2026-01-01_00-00-02", 3, 5)  # a searcher newer than the trial list
    assert repair_snapshot(exp)
    assert sorted(p.name for p in exp.glob("*-*")) == ["experiment_state-2026-01-01_00-00-01.json",
                                                       "search_gen_state-2026-01-01_00-00-01.json",
                                                       "searcher-state-2026-01-01_00-00-01.pkl"]
    assert pickle.loads((exp / "search_gen_state-2026-01-01_00-00-01.json").read_bytes()) == {"counter": 2}
    # the same session: a whole set behind the copy (Ray's copy into the folder lagged the kill)
    # is replaced; one as far as the copy, or further, is kept
    write_set(exp, "2026-01-01_00-00-01", 2, 2, iters=[6, 2])
    write_set(exp / "bnnsearch_state", "2026-01-01_00-00-01", 2, 2, iters=[6, 3])
    assert repair_snapshot(exp)
    assert json.loads(json.loads((exp / "experiment_state-2026-01-01_00-00-01.json").read_text())["trial_data"][1][1]) \
        == {"last_result": {"training_iteration": 3}}
    assert not repair_snapshot(exp)
    write_set(exp, "2026-01-01_00-00-01", 3, 3, iters=[6, 3, 0])
    assert not repair_snapshot(exp)
    # a copy from an earlier session is older than any whole set of this one, whatever it holds
    write_set(exp, "2026-01-01_00-00-03", 1, 1, iters=[1])
    assert not repair_snapshot(exp) and (exp / "experiment_state-2026-01-01_00-00-03.json").exists()
    for f in exp.glob("*-2026-01-01_00-00-03.*"):
        f.unlink()
    snap = exp / "experiment_state-2026-01-01_00-00-01.json"
    snap.write_bytes(snap.read_bytes()[:10])  # cut short, and no copy left: the set is removed
    (exp / "bnnsearch_state").rename(exp / "elsewhere")
    assert repair_snapshot(exp) and not list(exp.glob("*state-*"))


def test_resume_after_a_kill_that_cut_rays_snapshot_short(tmp_path):
    """Ray writes experiment_state-*.json in place: a SIGKILL mid-write leaves it truncated, and
    Tuner.restore then resumed with no trials (one more trial, then an incomplete stop, on every
    resume). Cut the newest snapshot in half after a kill: the resume restores the last whole
    copy and the record ends whole."""
    sp = space_file(tmp_path, ALPHA, {"epochs": 3, "batch_size": 16})
    n = 6
    args = ["sweep", str(sp), "--trials", str(n), "--sampler", "tpe", "--startup-trials", "2", "--name", "cut",
            "--concurrency", "2"]
    _kill_at(args, tmp_path, "[3/6]")
    exp = tmp_path / "bnnsearch_runs" / "cut"
    (snap,) = sorted(exp.glob("experiment_state-*.json"))[-1:]
    assert len(list((exp / "bnnsearch_state").iterdir())) == 3  # the whole set the callback keeps
    text = snap.read_bytes()
    snap.write_bytes(text[: len(text) // 2])
    _, out = _resume_and_check_the_record(tmp_path, args, n, epochs=3)
    assert "Failed to restore" not in out and "JSONDecodeError" not in out, out[-3000:]
    subprocess.run(["pkill", "-9", "-f", str(tmp_path)], check=False)


CLUSTER_SCRIPT = r"""
import sys, yaml
from ray.cluster_utils import Cluster
from bnnsearch.spaces import load_space
from bnnsearch.sweep import SweepArgs, run_sweep
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
tmp = sys.argv[1]
s = run_sweep(SweepArgs(space=load_space(sys.argv[2]), trials=4, sampler="random", address=cluster.address,
                        storage=tmp + "/runs", tracking_uri=f"sqlite:///{tmp}/mlflow.db", quiet=True))
from mlflow.tracking import MlflowClient
c = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
e = c.get_experiment_by_name(s["experiment"])
kids = c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'trial'")
print("NODES", len({k.data.tags["node_id"] for k in kids}), "COMPLETE", s["counts"]["complete"])
cluster.shutdown()
"""


def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path):
    sp = space_file(tmp_path, ALPHA, {"epochs": 3})
    script = tmp_path / "cluster.py"
    script.write_text(CLUSTER_SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(tmp_path), str(sp)], capture_output=True, text=True, timeout=400)
    assert "NODES 2 COMPLETE 4" in r.stdout, r.stdout[-2000:] + r.stderr[-3000:]


def test_cli_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: filtered\nparams: {alpha: {float: [1.0, 0.1]}}\n")
    r = subprocess.run([sys.executable, "-m", "bnnsearch.cli", "sweep", str(bad)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "params.alpha: low >= high" in r.stderr and "Traceback" not in r.stderr
    sp = space_file(tmp_path, ALPHA)
    r = subprocess.run([sys.executable, "-m", "bnnsearch.cli", "sweep", str(sp), "--sampler", "sobol"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice: 'sobol'" in r.stderr
    from bnnsearch.tracking import Tracker

    Tracker(f"sqlite:///{tmp_path}/mlflow.db", "bnnsearch/digits/mlp")  # a store with nothing of that name
    r = subprocess.run([sys.executable, "-m", "bnnsearch.cli", "best", "nothing-here"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2 and "no study or experiment named 'nothing-here'" in r.stderr and "Traceback" not in r.stderr


def test_killing_a_trial_worker_retries_or_fails_that_trial(ray_local, tmp_path):
    """SIGKILL one trial's worker process mid-study: that trial is retried (from its checkpoint)
    or marked failed, and the study still accounts for every trial."""
    import threading

    killed = []

    import ray

    # This test's own Ray only: trial workers are children of its raylet (another process's
    # studies on the same machine must never be touched).
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid

    def own_workers():
        out = subprocess.run(["pgrep", "-f", "ImplicitFunc"], capture_output=True, text=True).stdout.split()
        pids = []
        for p in out:
            try:
                ppid = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == raylet:
                pids.append(int(p))
        return pids

    def killer():
        t0 = time.time()
        while time.time() - t0 < 120 and not killed:
            pids = own_workers()
            if pids:
                time.sleep(1.5)  # let it report an epoch or two first
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.2)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    s = sweep(tmp_path, space_file(tmp_path, ALPHA, {"epochs": 6, "batch_size": 16}), trials=3, sampler="random",
              max_failures=2, concurrency=1, checkpoint_s=0)
    th.join(timeout=5)
    assert killed, "no trial worker was found to kill"
    # The killed worker could not remove its scratch folder; the next trial on this host did.
    import tempfile

    assert not list(Path(tempfile.gettempdir()).glob(f"bnnsearch-*-*-{killed[0]}-*"))
    n = s["counts"]
    assert n["complete"] + n["failed"] == 3
    _, parent, kids = mlflow_runs(tmp_path, s)
    assert len(kids) == 3 and parent.info.status == "FINISHED"
    # The kill hit a trial: it was retried (from its last epoch's checkpoint when it had one), or failed.
    hit = [k for k in kids if {"bnnsearch.retries", "bnnsearch.resumed_from_epoch"} & set(k.data.tags)
           or k.info.status == "FAILED"]
    assert hit, [k.data.tags for k in kids]
    for k in kids:
        if k.info.status == "FINISHED":  # a retried trial still records every epoch exactly once
            steps = sorted(m.step for m in mlflow_runs(tmp_path, s)[0].get_metric_history(k.info.run_id, "epoch"))
            assert steps == list(range(1, 7))


def test_study_against_an_mlflow_server(ray_local, tmp_path):
    """The same code against an `mlflow server` URI (here with a SQLite backend on loopback)."""
    import urllib.request

    from _proc import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        uri = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(uri + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        from bnnsearch.spaces import load_space
        from bnnsearch.sweep import SweepArgs, run_sweep

        s = run_sweep(SweepArgs(space=load_space(space_file(tmp_path, ALPHA)), trials=2, sampler="random", quiet=True,
                                storage=str(tmp_path / "runs"), tracking_uri=uri))
        assert s["counts"]["complete"] == 2
        from mlflow.tracking import MlflowClient

        c = MlflowClient(uri)
        e = c.get_experiment_by_name(s["experiment"])
        kids = c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'trial'")
        assert len(kids) == 2 and {a.path for a in c.list_artifacts(kids[0].info.run_id)} >= {"config.yaml"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)


def test_restore_adopts_trials_ray_kept_but_the_sampler_never_saw(tmp_path):
    """Ray writes its trial list just before the searcher's state: a kill in between leaves a
    trial Ray restores and runs but the sampler's snapshot lacks. It must be registered with the
    sampler under its own id (its outcome told), not replayed as a new trial with the same config;
    a journaled trial unknown to Ray is replayed with its config."""
    import json

    from bnnsearch.spaces import load_space
    from bnnsearch.searcher import JOURNAL, make_sampler, read_journal, searcher_cls

    space = load_space(space_file(tmp_path, ALPHA))
    exp = tmp_path / "exp"
    exp.mkdir()

    def searcher():
        return searcher_cls()(space=space.sampler_space(), metric="objective", mode="max",
                               sampler=make_sampler("random", 0, 1), full_epochs=2, journal=str(exp / JOURNAL))

    s = searcher()
    s.suggest("t1")
    s.save(str(tmp_path / "searcher.pkl"))  # the searcher's snapshot: t1 only
    s.suggest("t2")  # in Ray's list (below), not in the searcher's snapshot
    s.suggest("t3")  # in neither: started after both snapshots
    journal = {e["trial_id"]: e["params"] for e in read_journal(exp)}
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(
        {"trial_data": [[json.dumps({"trial_id": t}), "{}"] for t in ("t1", "t2")]}))
    r = searcher()
    r.restore(str(tmp_path / "searcher.pkl"))
    assert set(r._ot_trials) == {"t1", "t2"} and r._ot_trials["t2"].params == journal["t2"]
    assert r._replay == [("t3", journal["t3"])]
    r.on_trial_complete("t2", {"objective": 0.5, "epoch": 2})  # t2's outcome reaches the sampler
    assert [t.value for t in r._ot_study.trials if t.params == journal["t2"]] == [0.5]
    # A second kill: t3 was replayed as t4 after the searcher's next snapshot. Whether Ray kept
    # t4 (adopted) or not (t4 replayed), t3 is never replayed again: its config would train twice.
    r.save(str(tmp_path / "searcher2.pkl"))
    r.suggest("t4")
    assert read_journal(exp)[-1] == {"trial_id": "t4", "params": journal["t3"], "replay_of": "t3"}
    for in_ray, replay in ((("t1", "t2", "t4"), []), (("t1", "t2"), [("t4", journal["t3"])])):
        (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps(
            {"trial_data": [[json.dumps({"trial_id": t}), "{}"] for t in in_ray]}))
        r2 = searcher()
        r2.restore(str(tmp_path / "searcher2.pkl"))
        assert r2._replay == replay and ("t4" in r2._ot_trials) == ("t4" in in_ray)


def test_trials_read_a_relative_data_root_where_the_command_ran(ray_local, tmp_path, monkeypatch):
    """Ray runs each trial in its own working directory; the default data_root ./data must still
    be the folder the study was started in (resolved in the driver), for every trial."""
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "space.yaml"
    fixed = {k: v for k, v in FIXED.items() if k != "data"}
    p.write_text(yaml.safe_dump({"method": "filtered", "fixed": {**fixed, "data": "mnist1d",
                                                                 "data_args": {"num_samples": 400}},
                                 "params": ALPHA}))
    s = sweep(tmp_path, p, trials=2, sampler="random")
    assert s["counts"]["complete"] == 2
    _, _, kids = mlflow_runs(tmp_path, s)
    assert {k.data.params["data_root"] for k in kids} == {str(tmp_path / "data")}
    assert (tmp_path / "data" / "mnist1d_400.npz").exists()


def test_an_emptied_tuner_pkl_is_repaired_before_a_resume(tmp_path):
    """Ray rewrites tuner.pkl in place; a SIGKILL mid-write left it empty and the study could not
    resume. The copy taken once it was whole is put back (and nothing happens when it is whole)."""
    from bnnsearch.raystate import backup_tuner_pkl, repair_tuner_pkl

    (tmp_path / "tuner.pkl").write_bytes(b"whole")
    backup_tuner_pkl(tmp_path)
    (tmp_path / "tuner.pkl").write_bytes(b"")
    repair_tuner_pkl(tmp_path)
    assert (tmp_path / "tuner.pkl").read_bytes() == b"whole"
    (tmp_path / "tuner.pkl").write_bytes(b"newer")
    repair_tuner_pkl(tmp_path)
    assert (tmp_path / "tuner.pkl").read_bytes() == b"newer"


def test_trial_metrics_reads_the_reported_string_and_results_recorded_before():
    from bnnsearch.results import trial_metrics

    new = {"epoch": 2, "objective": 0.5, "metrics": json.dumps({"epoch": 2, "val/acc": 0.5, "train/loss": 1.25})}
    assert trial_metrics(new) == {"epoch": 2, "objective": 0.5, "val/acc": 0.5, "train/loss": 1.25}
    old = {"epoch": 2, "objective": 0.5, "val/acc": 0.5, "train/loss": 1.25}  # every metric a key (before)
    assert trial_metrics(old) == old and trial_metrics(None) == {}


def test_sender_holds_results_back_and_hands_them_over_with_the_next_report(monkeypatch, tmp_path):
    """trial._Sender: a result is held unless report_s passed, a checkpoint goes with it or it
    is final; the next report carries the held ones (oldest first); flush sends a held last."""
    from bnnsearch import results
    from bnnsearch import trial as sw

    sent = []
    monkeypatch.setattr(sw.tune, "report", lambda out, checkpoint=None: sent.append((dict(out), checkpoint)))
    clock = [100.0]
    monkeypatch.setattr(sw.time, "monotonic", lambda: clock[0])
    send = sw._Sender(tmp_path, checkpoint_s=30.0, report_s=2.0)
    for e in (1, 2):
        clock[0] += 0.5
        assert not send.due()
        send({"epoch": e})
    assert sent == []
    clock[0] += 1.5  # 2 s since the start: report, with epochs 1 and 2 held
    send.due()
    send({"epoch": 3})
    assert [r["epoch"] for r in results.earlier_results(sent[0][0])] == [1, 2] and sent[0][0]["epoch"] == 3
    clock[0] += 0.1
    send({"epoch": 4}, final=True)  # final: at once, nothing held
    assert sent[1][0] == {"epoch": 4}
    clock[0] += 0.05
    send.due()
    send({"epoch": 5})
    assert len(sent) == 2
    clock[0] += 30.0  # a checkpoint is due: it goes at once, flagged, with what was held
    assert send.due()
    send({"epoch": 6})
    out, ckpt = sent[2]
    assert ckpt is not None and out[results.CKPT_FLAG] == 1 and [r["epoch"] for r in results.earlier_results(out)] == [5]
    clock[0] += 0.1
    send.due()
    send({"epoch": 7})
    send.flush()
    assert sent[3][0] == {"epoch": 7} and len(sent) == 4
    send.flush()  # nothing held: nothing sent
    assert len(sent) == 4
    every = sw._Sender(tmp_path, checkpoint_s=30.0, report_s=0.0)  # Ray's ASHA: every epoch
    every.due()
    every({"epoch": 1})
    assert sent[4][0] == {"epoch": 1}


def test_a_trial_removes_the_scratch_folders_of_killed_workers_only(monkeypatch, tmp_path):
    """work_dir: folders whose owner (named in the folder) is a dead process on this host are
    removed; those of live processes, of other hosts (or pid namespaces) and of another form (older
    versions) stay."""
    import socket
    import zlib

    from bnnsearch import trial as sw

    monkeypatch.setattr(sw.tempfile, "tempdir", str(tmp_path))
    host = sw._host_key()
    assert host != f"{zlib.crc32(socket.gethostname().encode()):08x}"  # the pid namespace counts (Linux)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process (unless reused at once, which would keep its folder)
    folders = {"dead": f"bnnsearch-pack-{host}-{dead.pid}-abc", "live": f"bnnsearch-trial-{host}-{os.getpid()}-abc",
               "other host": f"bnnsearch-trial-0badc0de-{dead.pid}-abc", "old form": "bnnsearch-trial-abc123"}
    for f in folders.values():
        (tmp_path / f).mkdir()
        (tmp_path / f / "state.pt").write_bytes(b"x" * 100)
    w = sw.work_dir("trial")
    assert w.parent == tmp_path and w.name.startswith(f"bnnsearch-trial-{host}-{os.getpid()}-") and w.is_dir()
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {w.name} | {folders[k] for k in ("live", "other host", "old form")}, left

def test_searcher_reads_every_epoch_of_a_coalesced_report(tmp_path):
    """Optuna's intermediate values of a trial whose report carried held-back epochs: one per
    epoch, at the epoch (not at Ray's report count); a re-run epoch once."""
    import optuna

    from bnnsearch.spaces import load_space
    from bnnsearch.results import EARLIER
    from bnnsearch.searcher import searcher_cls

    space = load_space(space_file(tmp_path, ALPHA))
    s = searcher_cls()(space=space.sampler_space(), metric="objective", mode="max",
                        sampler=optuna.samplers.RandomSampler(seed=0), full_epochs=3,
                        journal=str(tmp_path / "journal.jsonl"))
    assert s.suggest("t1") is not None
    held = [{"epoch": 1, "objective": 0.1}, {"epoch": 2, "objective": 0.2}]
    s.on_trial_result("t1", {"epoch": 3, "objective": 0.3, "training_iteration": 1, EARLIER: json.dumps(held)})
    s.on_trial_result("t1", {"epoch": 3, "objective": 0.9, "training_iteration": 2})  # a re-run epoch: once
    (t,) = s._ot_study.get_trials(deepcopy=False)
    assert t.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3}


def test_rays_temp_file_race_is_not_logged_and_every_other_save_failure_is():
    """Ray's experiment-state copy can list a ``.<uuid>-tmp-...`` file that its next write renames
    (seen in `make demo`: a traceback, the study unharmed); only that failure is dropped."""
    import logging

    from bnnsearch.raystate import TempFileRace, quiet_temp_file_race

    quiet_temp_file_race()
    quiet_temp_file_race()  # once per process, not once per study
    log = logging.getLogger("ray.tune.execution.experiment_state")
    assert sum(isinstance(f, TempFileRace) for f in log.filters) == 1
    got = []
    handler = logging.Handler()
    handler.emit = got.append
    log.addHandler(handler)
    staged = "/tmp/ray/session_1/artifacts/2026-12-05/demo-r0/driver_artifacts"
    try:
        for e in (FileNotFoundError(f"[Errno 2] Failed to open local file '{staged}/.425a56dc-83f5-tmp-searcher-state-"
                                    "2026-12-05_01-35-15.pkl'. Detail: [errno 2] No such file or directory"),
                  FileNotFoundError(f"[Errno 2] Failed to open local file '{staged}/experiment_state-1.json'"),
                  FileNotFoundError(f"[Errno 2] Failed to open local file '{staged}/my-tmp-notes.txt'"),
                  PermissionError(f"[Errno 13] Permission denied: '{staged}/.425a56dc-tmp-searcher-state-1.pkl'")):
            try:
                raise e
            except OSError:
                log.error("Saving experiment state to storage at '/x/demo-r0' failed with exception: ", exc_info=True)
        log.error("Saving experiment state to storage at '/x/demo-r0' failed")  # no exception attached: kept
    finally:
        log.removeHandler(handler)
    kept = [None if r.exc_info is None else type(r.exc_info[1]) for r in got]
    assert kept == [FileNotFoundError, FileNotFoundError, PermissionError, None]
    assert "experiment_state-1.json" in str(got[0].exc_info[1])


def test_names_in_the_pickled_state_of_studies_from_before_the_split_still_resolve():
    """Ray pickles a study's Tuner (tuner.pkl: the MLflow callback, the study's args, and the
    searcher's class by value with the module functions it calls) and a resumed study unpickles
    it. Studies recorded before ``sweep.py`` was split into trial/searcher/record/raystate/results
    name these in ``bnnsearch.sweep`` (read from such a tuner.pkl with a find_class hook); a
    resume after an upgrade needs each of them there, as what it now is."""
    import pickle

    from bnnsearch import record, results, searcher, sweep

    found = {n: pickle.Unpickler.find_class(pickle.Unpickler(io.BytesIO(b"")), "bnnsearch.sweep", n)
             for n in ("MlflowCallback", "SweepArgs", "_ray_trial_ids", "earlier_results", "member_id",
                       "member_results", "read_journal")}
    assert found == {"MlflowCallback": record.MlflowCallback, "SweepArgs": sweep.SweepArgs,
                     "_ray_trial_ids": searcher._ray_trial_ids, "earlier_results": results.earlier_results,
                     "member_id": results.member_id, "member_results": results.member_results,
                     "read_journal": searcher.read_journal}
