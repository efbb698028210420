"""Ctrl-C is never a finish: real SIGINTs sent to the process group, as a terminal does.

An interrupted study exits 130, prints the exact --resume command, leaves its parent run KILLED
(tagged interrupted, no best config) and no child run RUNNING; that command completes exactly
what is missing. A comparison stops at its interrupted study (no later study starts) and its
--resume completes that study instead of skipping it. A second Ctrl-C exits at once."""
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml
from _proc import read_until, start_cli
from _spaces import automl_space_file
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

# 30 epochs: a trial lasts seconds (about 3 s on one core here), so a Ctrl-C sent a second after the
# first trial ends, or half a second after one reports mid-way, lands while trials run. With 6
# epochs (0.6 s a trial) the whole study could end before it (a CI run saw it).
FIXED = {"arch": "mlp", "arch_args": {"widths": [16, 16, 16]}, "data": "digits", "epochs": 30, "batch_size": 16,
         "device": "cpu"}
SPACES = {
    "filtered": {"alpha": {"float": [1e-4, 1e-1], "log": True}, "gamma": {"float": [0.01, 1.0], "log": True}},
    "latent": {"lr": {"float": [1e-3, 1.0], "log": True}},
}


def space_file(tmp_path, method, **fixed):
    p = tmp_path / f"{method}.yaml"
    p.write_text(yaml.safe_dump({"method": method, "objective": {"metric": "val/acc", "mode": "max"},
                                 "fixed": {**FIXED, "data_root": str(tmp_path / "data"), **fixed},
                                 "params": SPACES[method]}))
    return str(p)


def ctrl_c_at(proc, marker, wait_s=1.0, twice=False, ready=None):
    """Read until a line starts with marker (and ``ready()`` holds, if given), then SIGINT the
    whole process group; returns (output, seconds from the (last) SIGINT to the exit)."""
    seen = read_until(proc, marker)
    t0 = time.time()
    while ready is not None and not ready():
        assert time.time() - t0 < 120, "never ready"
        time.sleep(0.3)
    time.sleep(wait_s)
    os.killpg(proc.pid, signal.SIGINT)
    if twice:
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
    t1 = time.time()
    rest = proc.communicate(timeout=180)[0]
    return "".join(seen) + rest, time.time() - t1


def sigint_as_best_config_is_logged(monkeypatch, nth=1):
    """Patch Tracker.log_text to send this process a real SIGINT as the nth study logs its
    best_config.yaml (the handler runs there, mid-record); returns the run ids it saw log one."""
    from bnnsearch.tracking import Tracker

    log_text, logged = Tracker.log_text, []

    def patched(self, run_id, text, name):
        if name == "best_config.yaml":
            logged.append(run_id)
            if len(logged) == nth:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
        return log_text(self, run_id, text, name)

    monkeypatch.setattr(Tracker, "log_text", patched)
    return logged


def resume_line(out):
    lines = out.splitlines()
    i = lines.index("continue it with:")
    return shlex.split(lines[i + 1].strip())


def studies(tmp_path, experiment):
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    e = c.get_experiment_by_name(experiment)
    return c, e, c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'study'")


def assert_interrupted(c, e, parent):
    assert parent.info.status == "KILLED" and parent.data.tags["bnnsearch.status"] == "interrupted"
    assert "best_config.yaml" not in {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert "best_value" not in parent.data.tags
    kids = c.search_runs([e.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert not [k for k in kids if k.info.status == "RUNNING"]


def assert_complete(c, e, parent, n):
    assert parent.info.status == "FINISHED" and parent.data.tags["bnnsearch.status"] == "finished"
    assert parent.data.tags["n_finished_trials"] == str(n)  # not the count an interrupt left
    steps = sorted(m.step for m in c.get_metric_history(parent.info.run_id, "trial_state"))
    assert steps == list(range(1, n + 1)), steps
    kids = c.search_runs([e.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(kids) == n and all(k.info.status == "FINISHED" for k in kids), [(k.info.status, k.data.tags) for k in kids]
    assert "best_config.yaml" in {a.path for a in c.list_artifacts(parent.info.run_id)}


def test_ctrl_c_during_a_sweep_is_an_interrupt_and_resume_completes_it(tmp_path):
    n = 5
    args = ["sweep", space_file(tmp_path, "filtered"), "--trials", str(n), "--sampler", "random", "--concurrency", "2"]
    proc = start_cli(args, tmp_path)
    out, _ = ctrl_c_at(proc, "[1/5]")
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted" in out and "study 'filtered-random-s0'" in out and "\nstudy filtered-random-s0:" not in out
    cmd = resume_line(out)
    assert cmd[:2] == ["bnnsearch", "sweep"] and cmd[-3:] == ["--name", "filtered-random-s0", "--resume"]
    c, e, (parent,) = studies(tmp_path, "bnnsearch/digits/mlp")
    assert_interrupted(c, e, parent)
    best = subprocess.run([sys.executable, "-m", "bnnsearch.cli", "best", "filtered-random-s0"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)  # its trials so far, said to be so
    assert best.returncode == 0 and "note: study filtered-random-s0 was interrupted after" in best.stdout, best
    # resumed with another budget and a wider range: refused (Ray would restore the old sampler and
    # count to the new budget, a study of neither); the same space reworded and reordered is the same
    doc = yaml.safe_load(open(cmd[2]))
    wider = tmp_path / "filtered_wider.yaml"
    wider.write_text(yaml.safe_dump({**doc, "params": {**doc["params"], "alpha": {"float": [1e-5, 1e-1], "log": True}}}))
    changed = [*cmd[1:], "--trials", "6"]
    changed[1] = str(wider)
    r = subprocess.run([sys.executable, "-m", "bnnsearch.cli", *changed], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"bnnsearch: error: --resume: study 'filtered-random-s0' was run with --trials 5 (now 6); a different space "
        f"({wider} compiles to another: a range, a fixed value or an objective changed); resume it with the same "
        "flags and space, or give --name to start another"], r.stderr
    c, e, (parent,) = studies(tmp_path, "bnnsearch/digits/mlp")
    assert_interrupted(c, e, parent)
    same = tmp_path / "filtered_reworded.yaml"
    same.write_text("# the same space, reworded\n" + yaml.safe_dump(dict(reversed(list(doc.items()))), sort_keys=False))
    cmd[2] = str(same)
    done = subprocess.run([sys.executable, "-m", "bnnsearch.cli", *cmd[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[5/5]" in done.stdout and "[1/5]" not in done.stdout  # the counter continues
    c, e, (parent,) = studies(tmp_path, "bnnsearch/digits/mlp")
    assert_complete(c, e, parent, n)
    best = subprocess.run([sys.executable, "-m", "bnnsearch.cli", "best", "filtered-random-s0"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert best.returncode == 0 and "note: study" not in best.stdout, best


def test_ctrl_c_during_an_automl_study_and_resume_completes_it(tmp_path):
    """A conditional, multi-objective, constrained study (the searcher pickled into Ray's
    snapshot with its define-by-run space, restored, told by member of a metric list): the
    resumed study records every trial once, its hypervolume per trial, and its front."""
    import json

    n = 5
    p = automl_space_file(tmp_path, FIXED, {"filtered": SPACES["filtered"], "latent": SPACES["latent"]})
    proc = start_cli(["automl", p, "--trials", str(n), "--sampler", "tpe", "--startup-trials", "2"], tmp_path)
    out, _ = ctrl_c_at(proc, "[1/5]")
    assert proc.returncode == 130, out[-3000:]
    cmd = resume_line(out)
    assert cmd[:2] == ["bnnsearch", "automl"] and cmd[-3:] == ["--name", "automl-digits-tpe-s0", "--resume"]
    c, e, (parent,) = studies(tmp_path, "bnnsearch/digits/automl")
    assert_interrupted(c, e, parent)
    assert not (tmp_path / "runs" / "automl-digits-tpe-s0" / "pareto.json").exists()  # no front of a partial study
    done = subprocess.run([sys.executable, "-m", "bnnsearch.cli", *cmd[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    c, e, (parent,) = studies(tmp_path, "bnnsearch/digits/automl")
    assert_complete(c, e, parent, n)
    hv = sorted(c.get_metric_history(parent.info.run_id, "hypervolume"), key=lambda m: m.step)
    assert [m.step for m in hv] == list(range(1, n + 1)) and [m.value for m in hv] == sorted(m.value for m in hv)
    kids = c.search_runs([e.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert all("bnnsearch.objectives" in k.data.tags and "bnnsearch.feasible" in k.data.tags for k in kids)
    doc = json.loads((tmp_path / "runs" / "automl-digits-tpe-s0" / "pareto.json").read_text())
    assert doc["front"] and doc["hypervolume"] == hv[-1].value


def test_second_ctrl_c_exits_at_once(tmp_path):
    proc = start_cli(["sweep", space_file(tmp_path, "filtered"), "--trials", "6", "--sampler", "random",
                  "--concurrency", "2"], tmp_path)
    out, took = ctrl_c_at(proc, "[1/6]", wait_s=0.3, twice=True)
    assert proc.returncode == 130, out[-3000:]
    assert took < 10, took
    c, e, (parent,) = studies(tmp_path, "bnnsearch/digits/mlp")
    assert parent.info.status != "FINISHED" and "best_value" not in parent.data.tags


def test_ctrl_c_during_compare_stops_it_and_resume_completes_the_interrupted_study(tmp_path):
    trials = 4
    args = ["compare", space_file(tmp_path, "filtered"), space_file(tmp_path, "latent"), "--repeats", "1",
            "--trials", str(trials), "--sampler", "random", "--startup-trials", "1", "--concurrency", "2",
            "--out", str(tmp_path / "cmp")]
    proc = start_cli(args, tmp_path)

    def trial_running():  # a trial has reported mid-way (not its end): Ctrl-C lands inside the study
        import sqlite3

        try:
            with sqlite3.connect(tmp_path / "mlflow.db") as db:
                return db.execute("select count(*) from metrics where key = 'epoch' and value < ?",
                                  (FIXED["epochs"],)).fetchone()[0] > 0
        except sqlite3.Error:
            return False
    out, _ = ctrl_c_at(proc, "== filtered: repeat 1/1", wait_s=0.5, ready=trial_running)
    assert proc.returncode == 130, out[-3000:]
    assert "== latent" not in out  # the next method's study never started
    assert not (tmp_path / "cmp" / "summary.json").exists()
    experiment = "bnnsearch-compare/compare-filtered-latent"
    c, e, parents = studies(tmp_path, experiment)
    assert [p.data.tags["bnnsearch.study"] for p in parents] == ["compare-filtered-latent-filtered-r0"]
    assert_interrupted(c, e, parents[0])
    # --status reads how far it got: nothing finished, the interrupted study's counted trials
    counted = sum("bnnsearch.trial_index" in k.data.tags
                  for k in c.search_runs([e.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"))
    st = subprocess.run([sys.executable, "-m", "bnnsearch.cli", *args, "--status"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120)
    assert st.returncode == 0, st.stdout[-3000:] + st.stderr[-3000:]
    assert "0 of 2 studies finished" in st.stdout and f"repeat 1: {counted}/4 trials (interrupted)" in st.stdout
    assert "no estimate of what is left: no finished study yet for filtered, latent" in st.stdout
    cmd = resume_line(out)
    done = subprocess.run([sys.executable, "-m", "bnnsearch.cli", *cmd[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "already finished, skipped" not in done.stdout  # the interrupted study is continued, not skipped
    c, e, parents = studies(tmp_path, experiment)
    assert len(parents) == 2
    for p in parents:
        assert_complete(c, e, p, trials)
    st = subprocess.run([sys.executable, "-m", "bnnsearch.cli", *args, "--status"], cwd=tmp_path, capture_output=True,
                        text=True, timeout=120)
    assert "2 of 2 studies finished" in st.stdout and st.stdout.rstrip().endswith("; no study left"), st.stdout
    assert "all finished: the same command without --status writes its summary" in st.stdout
    rows = {line.split()[0]: line.split() for line in st.stdout.splitlines() if line.startswith(("filtered ", "latent "))}
    for p in parents:  # each arm's training seconds: its study's trials' time/total_s
        kids = c.search_runs([e.experiment_id], f"tags.`mlflow.parentRunId` = '{p.info.run_id}'")
        arm = p.data.tags["bnnsearch.study"].split("-")[-2]
        assert rows[arm][1] == "1/1" and rows[arm][2] == "-"
        assert int(rows[arm][3].replace(",", "")) == round(sum(k.data.metrics["time/total_s"] for k in kids))


@pytest.mark.parametrize("delay", [1.0, 2.5])
def test_ctrl_c_during_start_up_is_never_swallowed(tmp_path, delay):
    """A Ctrl-C in the first seconds (imports, the store, ray.init) once vanished inside a library
    and the study ran to the end with exit 0; it is remembered and ends the command (130) before
    anything is recorded."""
    proc = start_cli(["sweep", space_file(tmp_path, "filtered"), "--trials", "3", "--sampler", "random"], tmp_path)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out[-3000:]
    if (tmp_path / "mlflow.db").exists():
        c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
        e = c.get_experiment_by_name("bnnsearch/digits/mlp")
        parents = c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'study'") if e else []
        assert all(p.info.status != "FINISHED" for p in parents), out[-2000:]


def _budget_left(exp_dir) -> float:
    """Seconds of --time-budget left in Ray's newest snapshot of the study (its TimeoutStopper)."""
    import json

    import cloudpickle

    (snap,) = sorted(exp_dir.glob("experiment_state-*.json"))[-1:]
    stopper = cloudpickle.loads(bytes.fromhex(json.loads(snap.read_text())["runner_data"]["_stopper"]["value"]))
    found = [s for s in getattr(stopper, "_stoppers", [stopper]) if hasattr(s, "_budget")]
    assert found, f"no time budget in {type(stopper).__name__}"
    return found[0]._budget


def test_ctrl_c_during_a_time_budgeted_study_resumes_with_the_rest_of_its_budget(tmp_path):
    """--time-budget is the study's, not the session's: Ray keeps what is left in its snapshot
    and the resumed study runs that long, not a fresh budget; the record ends whole."""
    budget = 40
    args = ["sweep", space_file(tmp_path, "filtered"), "--trials", "0", "--time-budget", f"{budget}s",
            "--sampler", "random", "--concurrency", "1", "--name", "timed"]
    exp_dir = tmp_path / "bnnsearch_runs" / "timed"
    proc = start_cli(args, tmp_path)

    def spent_25s():
        try:
            return _budget_left(exp_dir) < budget - 25
        except (OSError, ValueError, KeyError):  # the snapshot is not there yet, or being written
            return False

    out, _ = ctrl_c_at(proc, "[1/", wait_s=0.0, ready=spent_25s)
    assert proc.returncode == 130, out[-3000:]
    left = _budget_left(exp_dir)
    assert 0 < left < budget - 20, left
    cmd = resume_line(out)
    assert cmd[-3:] == ["--name", "timed", "--resume"] and "--time-budget" in cmd
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "bnnsearch.cli", *cmd[1:]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    c, e, (parent,) = studies(tmp_path, "bnnsearch/digits/mlp")
    assert parent.info.status == "FINISHED" and parent.data.tags["bnnsearch.status"] == "finished"
    kids = c.search_runs([e.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    steps = sorted(m.step for m in c.get_metric_history(parent.info.run_id, "trial_state"))
    assert steps == list(range(1, len(kids) + 1)) and all(k.info.status in ("FINISHED", "KILLED") for k in kids)
    # the resumed session's trials ran for what was left (<= 15 s, plus the stop), not a new 40 s
    new = [k for k in kids if k.info.start_time >= t0 * 1000]
    assert new, "the resumed study ran no trial"
    span = (max(k.info.end_time for k in new) - min(k.info.start_time for k in new)) / 1000
    assert span < left + (budget - left) / 2, (span, left)
    assert _budget_left(exp_dir) <= 0


def test_ctrl_c_as_the_last_study_records_its_end_completes_the_record_and_stops_the_comparison(tmp_path,
                                                                                                 monkeypatch):
    """A fast study can end just before a Ctrl-C lands, while its finished record is written
    (best config, tags, end). The SIGINT (a real one, sent to this process as the second study
    logs its best config) must not cut that record in half — a KILLED "interrupted" study that
    carries a best config, seen in CI — and must stop the comparison: both studies are recorded
    finished, whole, and no summary is written."""
    import ray
    from bnnsearch import interrupts
    from bnnsearch.compare import run_compare
    from bnnsearch.errors import Interrupted
    from bnnsearch.spaces import load_space
    from bnnsearch.sweep import SweepArgs

    logged = sigint_as_best_config_is_logged(monkeypatch, nth=2)
    spaces = [load_space(space_file(tmp_path, m, epochs=2)) for m in ("filtered", "latent")]
    base = SweepArgs(space=spaces[0], trials=2, sampler="random", concurrency=2, quiet=True,
                     storage=str(tmp_path / "runs"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    before = signal.getsignal(signal.SIGINT)
    interrupts.install()
    try:
        with pytest.raises(Interrupted):
            run_compare(spaces, base, 1, 0.005, tmp_path / "cmp")
    finally:
        signal.signal(signal.SIGINT, before)
        interrupts._state.update(count=0, defer=False, in_tune=False)
        ray.shutdown()
    assert len(logged) == 2
    c, e, parents = studies(tmp_path, "bnnsearch-compare/compare-filtered-latent")
    assert len(parents) == 2
    for p in parents:
        assert p.info.status == "FINISHED" and p.data.tags["bnnsearch.status"] == "finished"
        assert "best_config.yaml" in {a.path for a in c.list_artifacts(p.info.run_id)} and "best_value" in p.data.tags
    assert not (tmp_path / "cmp" / "summary.json").exists()

    # --resume: both studies are finished (skipped); a Ctrl-C during the noise floor's third
    # re-training stops it, keeping the two done; the next --resume trains only the other two.
    import bnnsearch.engine

    fit, fits = bnnsearch.engine.fit, []

    def ctrl_c_in_the_third_fit(cfg, *a, **kw):
        fits.append(cfg.seed)
        if len(fits) == 3:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        return fit(cfg, *a, **kw)

    monkeypatch.setattr(bnnsearch.engine, "fit", ctrl_c_in_the_third_fit)
    interrupts.install()
    try:
        with pytest.raises(Interrupted, match="noise-floor re-trainings done so far"):
            run_compare(spaces, dataclasses.replace(base, resume=True), 1, 0.005, tmp_path / "cmp", noise_seeds=2)
        assert len(json.loads((tmp_path / "cmp" / "noise_floor_runs.json").read_text())) == 2
        interrupts._state.update(count=0)
        s = run_compare(spaces, dataclasses.replace(base, resume=True), 1, 0.005, tmp_path / "cmp", noise_seeds=2)
    finally:
        signal.signal(signal.SIGINT, before)
        interrupts._state.update(count=0, defer=False, in_tune=False)
        ray.shutdown()
    assert len(fits) == 3 + 2  # the interrupted third re-training is done again, the first two are not
    for m in ("filtered", "latent"):
        nf = s["methods"][m]["noise_floor"]
        assert len(nf["values"]) == 2 and all(0 < v <= 1 for v in nf["values"])
    assert (tmp_path / "cmp" / "summary.json").exists()


def test_ctrl_c_as_a_sweep_records_its_end_exits_130_with_the_study_finished(tmp_path, monkeypatch, capsys):
    """The command-line side of the same race: `bnnsearch sweep` whose study gets a SIGINT while
    it logs its best config prints its summary, says the record is complete and exits 130."""
    import ray
    from bnnsearch import interrupts
    from bnnsearch.cli import main

    sigint_as_best_config_is_logged(monkeypatch)
    monkeypatch.chdir(tmp_path)
    before = signal.getsignal(signal.SIGINT)
    try:
        rc = main(["sweep", space_file(tmp_path, "filtered", epochs=2), "--trials", "2", "--sampler", "random"])
    finally:
        signal.signal(signal.SIGINT, before)
        interrupts._state.update(count=0, defer=False, in_tune=False)
        ray.shutdown()
    out = capsys.readouterr()
    assert rc == 130, out.out[-2000:] + out.err[-2000:]
    assert "interrupted as the command finished; what it recorded is complete" in out.err
    assert "study filtered-random-s0: 2 complete" in out.out and "continue it with" not in out.err
    c, e, (parent,) = studies(tmp_path, "bnnsearch/digits/mlp")
    assert parent.info.status == "FINISHED" and parent.data.tags["bnnsearch.status"] == "finished"
    assert "best_config.yaml" in {a.path for a in c.list_artifacts(parent.info.run_id)}


def test_ctrl_c_as_an_automl_study_records_its_end_registers_nothing_and_says_how(tmp_path, monkeypatch, capsys):
    """`automl --register` whose study gets a SIGINT while it logs its best config: the study and
    its front are recorded whole, nothing is retrained or registered, exit 130, and the command it
    prints (--resume --register) registers the front point without training any trial again."""
    import ray
    from bnnsearch import interrupts
    from bnnsearch.cli import main

    sigint_as_best_config_is_logged(monkeypatch)
    monkeypatch.chdir(tmp_path)
    p = automl_space_file(tmp_path, {**FIXED, "epochs": 2}, {"filtered": SPACES["filtered"], "latent": SPACES["latent"]})
    before = signal.getsignal(signal.SIGINT)
    try:
        rc = main(["automl", p, "--trials", "2", "--sampler", "random", "--register", "reg"])
        out = capsys.readouterr()
        assert rc == 130, out.out[-2000:] + out.err[-2000:]
        assert "nothing was registered" in out.out and "wrote runs/automl-digits-random-s0/pareto.json" in out.out
        c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db", registry_uri=f"sqlite:///{tmp_path}/mlflow.db")
        assert not c.search_registered_models()
        cmd = shlex.split(out.out.split("Register it with:")[1].strip().splitlines()[0])
        assert cmd[:2] == ["bnnsearch", "automl"] and cmd[-5:] == ["--register", "reg", "--name",
                                                                   "automl-digits-random-s0", "--resume"]
        monkeypatch.undo()  # log_text as it was (and the working directory: set it again)
        monkeypatch.chdir(tmp_path)
        interrupts._state.update(count=0)
        rc = main(cmd[1:])
        out = capsys.readouterr()
        assert rc == 0, out.out[-2000:] + out.err[-2000:]
    finally:
        signal.signal(signal.SIGINT, before)
        interrupts._state.update(count=0, defer=False, in_tune=False)
        ray.shutdown()
    assert "registered models:/reg/1" in out.out and "[1/2]" not in out.out  # no trial trained again
    c, e, (parent,) = studies(tmp_path, "bnnsearch/digits/automl")
    assert parent.info.status == "FINISHED" and "pareto.json" in {a.path for a in c.list_artifacts(parent.info.run_id)}


def test_ctrl_c_while_automl_retrains_or_writes_the_model_to_register(tmp_path, monkeypatch, capsys):
    """`automl --register`: a SIGINT during the retraining of the front point registers nothing,
    says the study and its front are recorded (it said "before anything was recorded") and prints
    the command that registers it; a SIGINT while that command writes the model lets the model run
    and its registry version complete (both or neither), and says so. Exit 130 both times."""
    import importlib

    import mlflow
    import ray

    from bnnsearch import engine, interrupts
    from bnnsearch.cli import main

    def sigint_first(fn):
        def patched(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            return fn(*args, **kwargs)
        return patched

    monkeypatch.chdir(tmp_path)
    p = automl_space_file(tmp_path, {**FIXED, "epochs": 2}, {"filtered": SPACES["filtered"], "latent": SPACES["latent"]})
    before = signal.getsignal(signal.SIGINT)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = MlflowClient(uri, registry_uri=uri)  # this store's registry, whatever MLflow's global one is
    # MLflow's registry left set by an earlier call in this process (what bnnsearch's mlflow_uris
    # leaves: the module global, with the environment put back): the model must still go to this
    # study's store, not the stale one (only --registry-uri or the user's MLFLOW_REGISTRY_URI move it)
    mlflow.set_registry_uri(f"sqlite:///{tmp_path}/elsewhere.db")
    os.environ.pop("MLFLOW_REGISTRY_URI", None)  # which MLflow's setter also wrote
    try:
        monkeypatch.setattr(engine, "fit", sigint_first(engine.fit))  # the driver trains only the retraining
        rc = main(["automl", p, "--trials", "2", "--sampler", "random", "--register", "reg"])
        out = capsys.readouterr()
        assert rc == 130, out.out[-2000:] + out.err[-2000:]
        assert ("interrupted while retraining front point 1: the study and its front are recorded, nothing was "
                "registered") in out.err and "before anything was recorded" not in out.err
        assert not c.search_registered_models()
        e = c.get_experiment_by_name("bnnsearch/digits/automl")
        assert not c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'model'")
        cmd = shlex.split(out.err.split("Register it with:")[1].strip().splitlines()[0])
        assert cmd[-2:] == ["automl-digits-random-s0", "--resume"]
        monkeypatch.undo()
        monkeypatch.chdir(tmp_path)
        flavor = importlib.import_module("mlflow.pytorch")  # the module (mlflow.pytorch may be a lazy proxy)
        monkeypatch.setattr(flavor, "log_model", sigint_first(flavor.log_model))
        interrupts._state.update(count=0, defer=False, in_tune=False)
        rc = main(cmd[1:])
        out = capsys.readouterr()
        assert rc == 130, out.out[-2000:] + out.err[-2000:]
        assert "interrupted as the model was written; it is registered whole: models:/reg/1" in out.err
    finally:
        signal.signal(signal.SIGINT, before)
        interrupts._state.update(count=0, defer=False, in_tune=False)
        mlflow.set_registry_uri(None)
        ray.shutdown()
    (v,) = c.search_model_versions("name = 'reg'")
    assert c.get_run(v.run_id).info.status == "FINISHED"


def test_a_ctrl_c_after_the_command_returned_is_not_raised_into_the_teardown(monkeypatch, capsys):
    """After the command returns, the interpreter's atexit teardown (Ray's shutdown) runs: a Ctrl-C
    there raised KeyboardInterrupt into Ray's code (a traceback under a finished command). Now it
    prints one line; a second exits at once. The next command in the same process (tests call
    the CLI again and again) gets the usual handler back: a Ctrl-C interrupts it."""
    from bnnsearch import interrupts

    exits = []
    monkeypatch.setattr(interrupts.os, "_exit", exits.append)
    before = signal.getsignal(signal.SIGINT)
    try:
        interrupts.finished()
        assert signal.getsignal(signal.SIGINT) is interrupts.teardown_handler
        os.kill(os.getpid(), signal.SIGINT)  # a real one: no exception
        time.sleep(0.2)
        assert "the command has finished; shutting down (Ctrl-C again to exit now)" in capsys.readouterr().err
        assert exits == []
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
        assert exits == [130]
        interrupts.install()  # what the next command does first
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    finally:
        signal.signal(signal.SIGINT, before)
        interrupts._state.update(count=0, defer=False, in_tune=False)
