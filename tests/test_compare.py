"""A small real `bnnsearch compare` run (Ray, Optuna, MLflow) and its resume."""
import csv
import json
import subprocess
import sys

import pytest
import yaml
from _spaces import automl_space_file

pytestmark = pytest.mark.slow

FIXED = {"arch": "mlp", "arch_args": {"widths": [16, 16, 16]}, "data": "digits", "epochs": 1, "batch_size": 64,
         "device": "cpu"}


def spaces(tmp_path):
    out = []
    for method, params in (("latent", {"lr": {"float": [1e-4, 1.0], "log": True}}),
                           ("filtered", {"alpha": {"float": [1e-7, 1e-1], "log": True}})):
        p = tmp_path / f"{method}.yaml"
        p.write_text(yaml.safe_dump({"method": method, "objective": {"metric": "val/acc", "mode": "max"},
                                     "fixed": {**FIXED, "data_root": str(tmp_path / "data")}, "params": params}))
        out.append(str(p))
    return out


def run(tmp_path, *extra):
    cmd = [sys.executable, "-m", "bnnsearch.cli", "compare", *spaces(tmp_path), "--repeats", "2", "--trials", "3",
           "--sampler", "tpe", "--startup-trials", "2", "--out", str(tmp_path / "out"), "--name", "cmp", *extra]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def test_compare_end_to_end_and_resume(tmp_path):
    r = run(tmp_path, "--random-arm", "--noise-seeds", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "trials-to-target median [IQR]" in r.stdout and "Mann-Whitney U" in r.stdout
    out = tmp_path / "out"
    s = json.loads((out / "summary.json").read_text())
    assert set(s["methods"]) == {"latent", "filtered", "latent@random", "filtered@random"}
    assert s["repeats"] == 2 and s["trials"] == 3
    assert s["rank_test"]["test"] == "Mann-Whitney U"  # between the two methods, random arms apart
    for m in ("latent", "filtered"):  # each method against its own random-search arm
        vr = s["methods"][m]["vs_random"]
        assert vr["test"] in ("Mann-Whitney U", "identical") and vr["auc_minus_random"] == pytest.approx(
            s["methods"][m]["auc_mean"] - s["methods"][m + "@random"]["auc_mean"])
        assert f"{m} vs random search: AUC" in r.stdout
        pt = vr["paired"]  # repeat r of the method and of its random arm share seed and data
        assert pt["arms"] == [m, m + "@random"] and pt["n_pairs"] == 2
        assert f"AUC paired by repeat ({pt['test']}, 2 pairs): p = {pt['p_value']:.3g}" in r.stdout
    best = max(m["best_value"] for m in s["methods"].values())
    assert s["target"] == pytest.approx(best - 0.005)
    rows = list(csv.DictReader((out / "curves.csv").open()))
    assert len(rows) == 4 * 2 * 3
    for m in ("latent", "filtered"):  # best-so-far in the CSV is the running max of the values
        for rep in ("0", "1"):
            vals = [float(x["value"]) for x in rows if x["method"] == m and x["repeat"] == rep]
            bsf = [float(x["best_so_far"]) for x in rows if x["method"] == m and x["repeat"] == rep]
            assert bsf == [max(vals[: i + 1]) for i in range(len(vals))]
    # the incumbent's test accuracy: per study, test/acc of the best-validation trial so far
    for m in ("latent", "filtered"):
        inc = s["methods"][m]["incumbent_test"]
        assert inc["metric"] == "test/acc" and len(inc["mean"]) == 3 and 0 <= inc["final_mean"] <= 1
        for rep in ("0", "1"):
            rs = [x for x in rows if x["method"] == m and x["repeat"] == rep]
            vals, tests = [float(x["value"]) for x in rs], [float(x["test_value"]) for x in rs]
            for i, x in enumerate(rs):
                pick = max(range(i + 1), key=lambda j: (vals[j], -j))
                assert float(x["incumbent_test"]) == tests[pick]
    assert "test/acc of pick" in r.stdout
    # each study's pick after the whole budget, compared repeat by repeat: curves.csv's last incumbent
    from bnnsearch.efficiency import paired_test

    last = {m: [float([x for x in rows if x["method"] == m and x["repeat"] == rep][-1]["incumbent_test"])
                for rep in ("0", "1")] for m in s["methods"]}
    assert s["pick_test"]["metric"] == "test/acc"
    assert s["pick_test"]["paired"] == paired_test({"latent": last["latent"], "filtered": last["filtered"]})
    for m in ("latent", "filtered"):
        assert s["methods"][m]["vs_random"]["pick_paired"] == paired_test({m: last[m], m + "@random": last[m + "@random"]})
    assert s["pairwise_auc"] == [] and s["pick_test"]["pairwise"] == []  # two methods: the paired test is the pair
    assert "test/acc of each study's pick after 3 trials, paired by repeat:" in r.stdout
    # the noise floor: each arm's best config re-trained with two other seeds
    for m, st in s["methods"].items():
        nf = st["noise_floor"]
        assert len(nf["values"]) == 2 and all(0 <= v <= 1 for v in nf["values"]) and nf["seeds"][0] != nf["seeds"][1]
    assert "noise floor (best config, other seeds):" in r.stdout and isinstance(s["noise_warnings"], list)
    # efficiency against cost: CPU seconds until the target, from the trials' own time/total_s
    for m, st in s["methods"].items():
        for rep, (t, c) in enumerate(zip(st["ttt"], st["cpu_seconds_to_target"])):
            secs = [float(x["trial_seconds"] or 0) for x in rows if x["method"] == m and x["repeat"] == str(rep)]
            assert (c is None) == (t is None) and (t is None or c == pytest.approx(sum(secs[:t])))
    assert "alloc. CPU s to target" in r.stdout  # wall x --cpus-per-trial: what the trials held, not used
    # ... and the CPU seconds the trial processes measured (time/total_cpu_s), summed the same way
    for m, st in s["methods"].items():
        for rep, (t, c) in enumerate(zip(st["ttt"], st["process_cpu_seconds_to_target"])):
            cpu = [float(x["trial_cpu_seconds"]) for x in rows if x["method"] == m and x["repeat"] == str(rep)]
            assert all(v > 0 for v in cpu) and (c is None) == (t is None) and (t is None or c == pytest.approx(sum(cpu[:t])))
    assert "process CPU seconds to target (median;" in r.stdout
    # ... and the modelled training cost (cost/train_gates), the same for every trial of an arm here
    for m, st in s["methods"].items():
        for rep, (t, c) in enumerate(zip(st["ttt"], st["train_gates_to_target"])):
            g = [float(x["trial_train_gates"]) for x in rows if x["method"] == m and x["repeat"] == str(rep)]
            assert len(set(g)) == 1 and g[0] > 0 and (c is None) == (t is None) and (t is None or c == t * g[0])
    assert "modelled training cost to target (median Boolean gates" in r.stdout
    md = (out / "summary.md").read_text()  # the same findings as Markdown, for a write-up
    assert md.startswith("| method | HPs | studies | best val/acc |") and "\n- target: " in md
    assert sum(line.startswith("| latent") for line in md.splitlines()) == 2  # latent, latent@random
    for png in ("efficiency.png", "trials_to_target.png", "efficiency_cost.png"):  # (the last: against gates)
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    e = c.get_experiment_by_name("bnnsearch-compare/cmp")
    comp = c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'comparison'")
    assert len(comp) == 1
    links = json.loads(comp[0].data.tags["study_runs"])
    assert {len(v) for v in links.values()} == {2} and len(links) == 4
    samplers = {c.get_run(p).data.tags["sampler"] for p in links["latent@random"]}
    assert samplers == {"random"} and {c.get_run(p).data.tags["sampler"] for p in links["latent"]} == {"tpe"}
    assert {a.path for a in c.list_artifacts(comp[0].info.run_id)} >= {"summary.json", "summary.md", "curves.csv",
                                                                       "efficiency.png"}
    # rerun: every study is finished, so all are skipped and the statistics are the same
    r2 = run(tmp_path, "--random-arm", "--resume")
    assert r2.returncode == 0 and r2.stdout.count("already finished, skipped") == 8
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["target"] == s["target"] and s2["methods"]["latent"]["ttt"] == s["methods"]["latent"]["ttt"]
    # a rerun with another budget or sampler is another comparison: its recorded studies are not
    # counted as its own (they were: 3-trial studies summarised as 4-trial ones), nothing is written
    n_comparisons = len(c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'comparison'"))
    for extra, was in ((["--resume", "--trials", "4"], "--trials 3 (now 4)"),
                       (["--resume", "--sampler", "random"], "--sampler tpe (now random)"),
                       (["--status", "--trials", "4"], "--trials 3 (now 4)")):  # --status said "4 trials each"
        r3 = run(tmp_path, "--random-arm", *extra)
        assert r3.returncode == 2 and r3.stdout == "", r3.stdout[-2000:]
        assert r3.stderr.strip().splitlines() == [
            f"bnnsearch: error: comparison 'cmp': its study 'cmp-latent-r0' was run with {was}; give the spaces and "
            "flags it was run with, or --name for a new comparison"], r3.stderr
    assert json.loads((out / "summary.json").read_text()) == s2
    assert len(c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'comparison'")) == n_comparisons


def test_compare_with_asha_reports_rung_correlations(tmp_path):
    (p,) = [x for x in spaces(tmp_path) if x.endswith("filtered.yaml")]
    raw = yaml.safe_load(open(p))
    raw["fixed"]["epochs"] = 4
    open(p, "w").write(yaml.safe_dump(raw))
    r = subprocess.run([sys.executable, "-m", "bnnsearch.cli", "compare", p, "--repeats", "1", "--trials", "6",
                        "--sampler", "random", "--scheduler", "asha", "--target-gap", "0.9", "--out", str(tmp_path / "out"),
                        "--name", "asha"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    rung = s["methods"]["filtered"]["asha_rung_spearman"]
    assert set(rung) == {"1", "3"}  # rungs at epochs 1 and 3 below the budget of 4
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    e = c.get_experiment_by_name("bnnsearch-compare/asha")
    full = c.search_runs([e.experiment_id], "tags.`bnnsearch.status` = 'complete'")
    assert rung["1"]["n"] == len(full)  # every full-budget trial, and only those
    assert rung["1"]["spearman"] is None or -1 <= rung["1"]["spearman"] <= 1
    assert "rank correlation of each ASHA rung" in r.stdout
    # the gap target: 0.9 of the way from a random config's median to the best arm's median final value
    rule = s["target_rule"]
    assert rule["rule"] == "gap" and s["target"] == pytest.approx(
        rule["random_median"] + 0.9 * (rule["best_arm_median"] - rule["random_median"]))
    assert "0.9 of the way from a random config's median" in r.stdout
    own = s["methods"]["filtered"]["own_target"]  # the arm against its own random configs and plateau
    assert own is None or own["target"] == pytest.approx(own["random_median"] + 0.9 * (own["plateau"] -
                                                                                         own["random_median"]))
    assert "0.9 of the way from a random config" in (tmp_path / "out" / "dashboard.html").read_text()


def test_compare_of_an_automl_space_under_two_samplers_compares_hypervolume(tmp_path):
    """Multi-objective studies compare by the hypervolume after each trial (the parents' record),
    one arm per sampler; the dashboard draws the same curves."""
    from mlflow.tracking import MlflowClient

    p = automl_space_file(tmp_path, FIXED, {"latent": {"lr": {"float": [1e-4, 1.0], "log": True}},
                                            "filtered": {"alpha": {"float": [1e-7, 1e-1], "log": True}}})
    cmd = [sys.executable, "-m", "bnnsearch.cli", "compare", p, "--samplers", "tpe,tpe-flat", "--repeats", "2",
           "--trials", "3", "--startup-trials", "2", "--out", str(tmp_path / "out"), "--name", "cmpmo"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["metric"] == "hypervolume" and s["mode"] == "max" and set(s["methods"]) == {"automl@tpe", "automl@tpe-flat"}
    assert s["target_rule"]["rule"] == "gap" and s["rank_test"]["test"] in ("Mann-Whitney U", "identical")
    assert s["paired_test"]["arms"] == ["automl@tpe", "automl@tpe-flat"] and s["paired_test"]["n_pairs"] == 2
    assert "paired by repeat (same seeds and data), AUC:" in r.stdout
    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    rows = list(csv.DictReader((tmp_path / "out" / "curves.csv").open()))
    for arm, st in s["methods"].items():
        for rep, pid in enumerate(st["study_runs"]):
            assert c.get_run(pid).data.params["sampler"] == arm.split("@")[1]
            hv = [m.value for m in sorted(c.get_metric_history(pid, "hypervolume"), key=lambda m: m.step)]
            got = [float(x["value"]) for x in rows if x["method"] == arm and x["repeat"] == str(rep)]
            assert got == hv and len(hv) == 3
    page = (tmp_path / "out" / "dashboard.html").read_text()
    assert "best-so-far hypervolume" in page and "AutoML front" in page


def test_compare_with_ax_initial_design_gives_each_arm_its_own_startup(tmp_path):
    """``--startup-trials ax`` (the Figure 8 ablation of the initial design): a 3-parameter arm
    starts its model after max(5, 2·3) = 6 random trials, a 1-parameter arm after 5; each study is
    run with its own count (recorded on its parent run) and the report says so. The two arms are
    two spaces of one method told apart by their ``name:`` (latent over lr alone against latent
    over three hyperparameters: what tuning more of them costs)."""
    lat, _ = spaces(tmp_path)
    raw = yaml.safe_load(open(lat))
    one, three = tmp_path / "lat1.yaml", tmp_path / "lat3.yaml"
    one.write_text(yaml.safe_dump({**raw, "name": "latent-lr"}))
    raw["params"].update({"weight_decay": {"float": [1e-6, 1e-1], "log": True}, "momentum": {"float": [0.0, 0.9]}})
    three.write_text(yaml.safe_dump({**raw, "name": "latent-3hp"}))
    r = subprocess.run([sys.executable, "-m", "bnnsearch.cli", "compare", str(three), str(one), "--repeats", "1",
                        "--trials", "7", "--sampler", "tpe", "--startup-trials", "ax", "--out", str(tmp_path / "out"),
                        "--name", "ax"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["initial_design"] == "ax" and s["startup_trials"] == 5  # the random phase every arm shares
    assert {m: st["startup_trials"] for m, st in s["methods"].items()} == {"latent-3hp": 6, "latent-lr": 5}
    assert "initial design: Ax's default, max(5, 2 x searched parameters) random trials per arm: latent-3hp 6, " \
        "latent-lr 5" in r.stdout
    assert {m: (st["training_method"], st["space"]) for m, st in s["methods"].items()} == {
        "latent-3hp": ("latent", str(three)), "latent-lr": ("latent", str(one))}
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for m, n in (("latent-3hp", "6"), ("latent-lr", "5")):  # what each study's sampler was built with
        (pid,) = s["methods"][m]["study_runs"]
        run = c.get_run(pid)
        assert run.data.params["startup_trials"] == n and run.data.tags["mlflow.runName"] == f"{m} tpe r0"
        assert run.data.tags["method"] == "latent" and run.data.tags["space_name"] == m
        assert run.data.tags["bnnsearch.study"] == f"ax-{m}-r0"


def test_compare_of_pack_sizes_runs_each_space_packed_and_unpacked(tmp_path):
    """``--packs 1,4 --random-arm``: arms latent@pack1, latent@pack4 and latent@random, same
    seeds and budget; each study runs with its own pack size (recorded on its parent run, and
    the pack4 arm's trials are members of packs of 4), and each pack arm is tested against the
    method's random arm."""
    lat, _ = spaces(tmp_path)
    r = subprocess.run([sys.executable, "-m", "bnnsearch.cli", "compare", lat, "--packs", "1,4", "--random-arm",
                        "--repeats", "1", "--trials", "4", "--sampler", "tpe", "--startup-trials", "2",
                        "--out", str(tmp_path / "out"), "--name", "pk"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(s["methods"]) == {"latent@pack1", "latent@pack4", "latent@random"} and s["packs"] == [1, 4]
    for arm in ("latent@pack1", "latent@pack4"):
        assert s["methods"][arm]["vs_random"]["paired"]["arms"] == [arm, "latent@random"]
    assert s["methods"]["latent@random"]["vs_random"] is None
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for arm, pack in (("latent@pack1", "1"), ("latent@pack4", "4")):
        (pid,) = s["methods"][arm]["study_runs"]
        run = c.get_run(pid)
        assert run.data.params["pack"] == pack and run.data.params["sampler"] == "tpe"
        kids = c.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{pid}'")
        assert len(kids) == 4
        assert {k.data.tags.get("bnnsearch.pack_size", "1") for k in kids} == {pack}
    (pid,) = s["methods"]["latent@random"]["study_runs"]
    assert c.get_run(pid).data.params["sampler"] == "random"
    e = c.get_experiment_by_name("bnnsearch-compare/pk")
    (comp,) = c.search_runs([e.experiment_id], "tags.`bnnsearch.kind` = 'comparison'")
    assert comp.data.params["packs"] == "1,4"


def test_pairwise_table_lists_every_pair_of_methods_with_holm_adjusted_p():
    from bnnsearch.compare import pairwise_table
    from bnnsearch.efficiency import pairwise_paired

    aucs = {"a": [0.9, 0.8, 0.85, 0.7, 0.95, 0.6], "b": [0.8, 0.75, 0.8, 0.6, 0.9, 0.55],
            "c": [0.85, 0.85, 0.7, 0.65, 0.99, 0.5]}
    picks = {"a": [0.5, 0.6, 0.7, 0.8, 0.9, 1.0], "b": [0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
             "c": [0.4, 0.5, 0.6, 0.7, 0.8, None]}
    s = {"pairwise_auc": pairwise_paired(aucs),
         "pick_test": {"metric": "test/acc", "pairwise": pairwise_paired(picks)}}
    lines = pairwise_table(s, markdown=True).splitlines()
    assert lines[0] == ("| pair (paired by repeat) | AUC: mean difference (wins) | p (Holm) "
                        "| test/acc of pick: mean difference (wins) | p (Holm) |")
    # a beats b in all 6 repeats: exact p 2/64, times 3 pairs (the smallest of three); picks of a and
    # b are equal (p 1); a beats c in 5 paired repeats (c's sixth has no value): exact p 2/32, which
    # ties with b - c's for the smallest of three, so both become 3 x 2/32 (Holm keeps them ordered)
    assert lines[2] == "| a - b | +0.0667 (6/6) | 0.0938 | +0 (0/6) | 1 |"
    assert lines[3].startswith("| a - c |") and lines[3].endswith("| +0.1 (5/5) | 0.188 |")
    assert len(lines) == 5
    assert pairwise_table({"pairwise_auc": [], "pick_test": None}) == ""


def test_status_estimates_the_noise_floor_from_each_arms_mean_trial_seconds():
    from bnnsearch.compare import noise_floor_s, progress_report

    arms = [{"arm": "a", "finished": 2, "repeats": 3, "unfinished": [], "training_s": 500.0,
             "mean_s_per_finished_study": 250.0},
            {"arm": "b", "finished": 1, "repeats": 3, "unfinished": [], "training_s": 1000.0,
             "mean_s_per_finished_study": 1000.0}]
    # 5 seeds x (250/25 + 1000/25) s per trial = 5 x 50 = 250 s
    assert noise_floor_s(arms, 25, 5) == 250.0
    assert noise_floor_s(arms, 25, 0) == 0.0
    p = {"name": "c", "arms": arms, "trials": 25, "studies": 6, "finished": 3, "training_s": 1500.0,
         "left_training_s": 2250.0, "left_wall_s": 1125.0, "no_estimate": [], "concurrency": 2,
         "noise_seeds": 5, "noise_floor_s": 3600.0 * 1.25}
    last = progress_report(p).splitlines()[-1]
    assert last == ("training seconds so far: 1,500; about 2,250 training s left (the finished studies' mean per arm), "
                    "about 19 min at 2 trials at once; then the noise floor, 5 re-trainings of each arm's best "
                    "configuration one at a time: about 1.2 h (at each arm's mean trial seconds; any already cached "
                    "in --out are not trained again)")
    assert progress_report({**p, "noise_seeds": 0}).splitlines()[-1].endswith("about 19 min at 2 trials at once")
    # on a cluster of unknown size (--address, no --concurrency): no wall time is made up
    assert progress_report({**p, "noise_seeds": 0, "left_wall_s": None, "concurrency": 0}).splitlines()[-1].endswith(
        "; give --concurrency for a wall-time estimate")
    # a short comparison's seconds are not rounded to 0; a finished one says what to run
    tiny = [{**a, "training_s": 0.41, "mean_s_per_finished_study": 0.205, "finished": 3} for a in arms]
    text = progress_report({**p, "arms": tiny, "finished": 6, "training_s": 0.82, "left_training_s": 0.0,
                            "left_wall_s": 0.0, "noise_seeds": 0})
    assert "all finished: the same command without --status writes its summary" in text
    assert text.splitlines()[-1] == "training seconds so far: 0.82; no study left"
    assert "0.41" in text and "0.2" in text
