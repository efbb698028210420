"""Packed trials in real studies (Ray Tune local, Optuna, MLflow on SQLite): every member is
its own MLflow child run and its own Optuna trial, exactly as an unpacked trial is."""
import subprocess
import sys
import time

import pytest
from _proc import read_until, start_cli
from test_sweep import ALPHA, _kept_copy_names_a_running_checkpoint, mlflow_runs, space_file, sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _packs(kids) -> dict[str, list]:
    out: dict[str, list] = {}
    for k in kids:
        out.setdefault(k.data.tags["bnnsearch.pack"], []).append(k)
    return out


def test_packed_study_records_members_as_trials(ray_local, tmp_path, capsys):
    params = {**ALPHA, "batch_size": {"categorical": [32, 64]}}
    s = sweep(tmp_path, space_file(tmp_path, params), trials=7, sampler="tpe", startup_trials=2, pack=3)
    assert s["counts"] == {"complete": 7, "stopped early": 0, "diverged": 0, "failed": 0}
    assert s["sampler_states"] == {"COMPLETE": 7}  # one Optuna trial per member, each told
    c, parent, kids = mlflow_runs(tmp_path, s)
    assert parent.data.params["pack"] == "3"
    assert len(kids) == 7 and all(k.info.status == "FINISHED" for k in kids)
    packs = _packs(kids)
    assert sorted(len(v) for v in packs.values()) == [1, 3, 3]  # 7 = 3 + 3 + 1
    for members in packs.values():
        assert sorted(int(k.data.tags["bnnsearch.pack_member"]) for k in members) == list(range(len(members)))
        assert len({k.data.params["batch_size"] for k in members}) == 1  # structural: once per pack
        if len(members) > 1:
            assert len({k.data.params["hparams.alpha"] for k in members}) == len(members)
    assert sorted(k.info.run_name for k in kids) == [f"filtered t{i:02d}" for i in range(1, 8)]
    for k in kids:  # a member's record is a trial's: every epoch once, static cost once, artifacts
        assert sorted(m.step for m in c.get_metric_history(k.info.run_id, "val/acc")) == [1, 2]
        assert [m.step for m in c.get_metric_history(k.info.run_id, "cost/bops")] == [1]
        assert k.data.metrics.get("pack/size", 1) == len(packs[k.data.tags["bnnsearch.pack"]])
    assert {"config.yaml", "cost.json"} <= {a.path for a in c.list_artifacts(kids[0].info.run_id)}
    pid = parent.info.run_id
    assert sorted(m.step for m in c.get_metric_history(pid, "trial_state")) == list(range(1, 8))
    curve = [m.value for m in sorted(c.get_metric_history(pid, "best_so_far"), key=lambda m: m.step)]
    assert curve == sorted(curve) and curve[-1] == max(k.data.metrics["objective"] for k in kids)
    assert {r["trial"] for r in s["trials"]} == {k.data.tags["bnnsearch.trial_id"] for k in kids}
    assert "#" in s["top"][0]["trial"]
    # `best` says when the best trial trained in a pack (float32 reproduction is then not exact)
    from bnnsearch.cli import main

    capsys.readouterr()
    assert main(["best", "filtered-tpe-s0", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                 "--out", str(tmp_path / "best.yaml")]) == 0
    top = next(k for k in kids if k.data.tags["bnnsearch.trial_id"] == s["top"][0]["trial"])
    assert ("a member of a pack of" in capsys.readouterr().out) == (top.data.tags["bnnsearch.pack_size"] != "1")


def test_a_diverging_member_is_recorded_and_its_pack_goes_on(ray_local, tmp_path):
    params = {"fp_lr": {"categorical": [1e-3, 1e38]}}
    s = sweep(tmp_path, space_file(tmp_path, params, {"hparams": {"fp_optimizer": "sgd"}, "epochs": 3}), trials=4,
              sampler="random", seed=3, pack=4)
    assert s["counts"]["diverged"] >= 1 and s["counts"]["complete"] >= 1
    assert s["counts"]["diverged"] + s["counts"]["complete"] == 4
    c, _, kids = mlflow_runs(tmp_path, s)
    assert len(_packs(kids)) == 1  # one pack held both kinds
    div = [k for k in kids if k.data.tags.get("diverged") == "1"]
    assert all(k.data.params["hparams.fp_lr"] == "1e+38" and k.data.metrics["objective"] == 0.0 for k in div)
    ok = [k for k in kids if k.data.tags["bnnsearch.status"] == "complete"]
    assert all(k.data.params["hparams.fp_lr"] == "0.001" for k in ok)
    assert all(sorted(m.step for m in c.get_metric_history(k.info.run_id, "epoch")) == [1, 2, 3] for k in ok)


def test_asha_stops_single_members_and_tells_them_pruned(ray_local, tmp_path):
    s = sweep(tmp_path, space_file(tmp_path, ALPHA, {"epochs": 4}), trials=9, sampler="random", scheduler="asha",
              pack=3)
    n = s["counts"]
    assert n["stopped early"] > 0 and n["complete"] > 0 and n["complete"] + n["stopped early"] == 9
    assert s["sampler_states"].get("PRUNED", 0) == n["stopped early"]
    assert s["sampler_states"].get("COMPLETE", 0) == n["complete"]
    c, _, kids = mlflow_runs(tmp_path, s)
    stopped = [k for k in kids if k.data.tags.get("bnnsearch.status") == "stopped early"]
    assert len(stopped) == n["stopped early"] and all(k.data.metrics["epoch"] < 4 for k in stopped)
    assert all(k.info.status == "KILLED" for k in stopped)
    # a pack whose member stopped trained its other members on (member-level, not pack-level)
    mixed = [v for v in _packs(kids).values() if {k.data.tags["bnnsearch.status"] for k in v} >= {"complete", "stopped early"}]
    assert mixed
    # stops happen only at ASHA's milestones for 4 epochs (rf 3, grace 1): epochs 1 and 3
    assert {int(k.data.metrics["epoch"]) for k in stopped} <= {1, 3}


def test_an_unpackable_study_says_so_and_runs_unpacked(ray_local, tmp_path, capsys):
    from bnnsearch.spaces import load_space
    from bnnsearch.sweep import SweepArgs, run_sweep

    sp = space_file(tmp_path, ALPHA, {"freeze_binary": True})
    s = run_sweep(SweepArgs(space=load_space(sp), trials=2, sampler="random", pack=2, storage=str(tmp_path / "runs"),
                            tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"))
    assert "cannot be packed (freeze_binary" in capsys.readouterr().out
    _, _, kids = mlflow_runs(tmp_path, s)
    assert len(kids) == 2 and not any("bnnsearch.pack" in k.data.tags for k in kids)


def test_resume_after_sigkill_keeps_every_member(tmp_path):
    """Kill the driver while the second pack trains (after it has checkpointed), resume: every
    member once (no member lost or re-sampled), every epoch once, the killed pack continues
    from its checkpoint, the parent's record holds steps 1..N once."""
    sp = space_file(tmp_path, ALPHA, {"epochs": 6, "batch_size": 16})
    n = 6
    args = ["sweep", str(sp), "--trials", str(n), "--sampler", "tpe", "--startup-trials", "2", "--name", "killpack",
            "--concurrency", "1", "--checkpoint-s", "0", "--pack", "3"]
    import os
    import signal

    proc = start_cli(args, tmp_path)
    read_until(proc, "[3/6]", 240)  # the first pack finished; the second starts
    exp_dir = tmp_path / "bnnsearch_runs" / "killpack"
    deadline = time.time() + 120
    while not _kept_copy_names_a_running_checkpoint(exp_dir, 6) and time.time() < deadline:
        time.sleep(0.05)
    assert _kept_copy_names_a_running_checkpoint(exp_dir, 6), "the second pack's checkpoint never reached the snapshot"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    done = subprocess.run([sys.executable, "-m", "bnnsearch.cli", *args, "--resume"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    e = c.get_experiment_by_name("bnnsearch/digits/mlp")
    kids = c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'trial'")
    assert len(kids) == n and all(k.info.status == "FINISHED" for k in kids), [k.data.tags for k in kids]
    assert len({(k.data.params["hparams.alpha"], k.data.params["hparams.gamma"]) for k in kids}) == n
    for k in kids:
        steps = [m.step for m in c.get_metric_history(k.info.run_id, "epoch")]
        assert sorted(steps) == list(range(1, 7)), (k.data.tags["bnnsearch.trial_id"], steps)
    resumed = [int(k.data.tags["bnnsearch.resumed_from_epoch"]) for k in kids if "bnnsearch.resumed_from_epoch" in k.data.tags]
    assert len(resumed) == 3 and all(0 < r < 6 for r in resumed), resumed  # the killed pack's three members
    (parent,) = c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'study'")
    assert sorted(m.step for m in c.get_metric_history(parent.info.run_id, "trial_state")) == list(range(1, n + 1))
    subprocess.run(["pkill", "-9", "-f", str(tmp_path)], check=False)


def test_compare_with_packed_studies(tmp_path):
    import csv
    import json

    from test_compare import spaces

    cmd = [sys.executable, "-m", "bnnsearch.cli", "compare", *spaces(tmp_path), "--repeats", "2", "--trials", "4",
           "--sampler", "tpe", "--startup-trials", "2", "--out", str(tmp_path / "out"), "--name", "cmp", "--pack", "2"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(s["methods"]) == {"latent", "filtered"} and s["trials"] == 4
    rows = list(csv.DictReader((tmp_path / "out" / "curves.csv").open()))
    assert len(rows) == 2 * 2 * 4  # every member is a trial of its study
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    kids = c.search_runs([e.experiment_id for e in c.search_experiments()], "tags.`bnnsearch.kind` = 'trial'")
    assert len(kids) == 16 and all(k.data.tags["bnnsearch.pack_size"] == "2" for k in kids)
