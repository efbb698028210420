"""AutoML (bnnsearch/automl.py, bnnsearch/modelio.py): one study across methods with several
objectives and hard constraints, its Pareto front and hypervolume, and the registered network.

References: hand-computed fronts and hypervolumes; the conditional structure checked trial by
trial on a real Optuna study; the registered model's test accuracy against the value its run
recorded (exact), and the retrained network against the study's own trial (exact on CPU)."""
from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from bnnsearch.automl import AutoSpace, constraint_values, dominates, front_ties, hypervolume, pareto_front
from bnnsearch.spaces import load_space

ROOT = Path(__file__).resolve().parents[1]
MO = [("val/acc", "max"), ("cost/mem_bits", "min")]


def automl_file(tmp_path, **over):
    doc = {
        "objectives": [{"metric": "val/acc", "mode": "max"}, {"metric": "cost/mem_bits", "mode": "min"}],
        "constraints": {"cost/mem_bits": {"max": 150000}},
        "fixed": {"data": "digits", "epochs": 2, "batch_size": 64, "device": "cpu", "threads": 1,
                  "data_root": str(tmp_path / "data")},
        "params": {"arch_args.widths": {"categorical": [[16, 16], [32, 32], [64, 64]]}},
        "methods": {"latent": {"params": {"lr": {"float": [0.1, 100.0], "log": True}}},
                    "filtered": {"params": {"alpha": {"float": [1e-4, 1e-1], "log": True}}},
                    "local_binary": {"fixed": {"arch": "local_mlp", "hparams": {"group_size": 8}},
                                     "params": {"robustness": {"float": [0.0, 1.0]}}}},
    }
    doc.update(over)
    p = tmp_path / "automl.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


# --- the space -----------------------------------------------------------------------------

def test_shipped_space_has_every_method_beneath_a_method_choice():
    from bnnsearch.methods import METHODS

    s = load_space(ROOT / "search_spaces" / "automl.yaml")
    assert isinstance(s, AutoSpace) and s.multi and s.constraints
    assert s.params[0].name == "method" and set(s.params[0].choices) == set(METHODS.names())
    for p in s.params[1:]:
        owner = s.owner(p)
        if owner is None:
            assert not p.when  # shared: in every trial
        else:
            assert p.when[0] == ("method", (owner,))
    for m in s.methods:  # each method's config carries its own fixed keys and defaults
        cfg = s.config({"method": m})
        assert cfg.method == m
    assert s.config({"method": "local_binary"}).arch == "local_mlp"


def test_a_method_parameter_never_leaks_into_another_methods_config(tmp_path):
    s = load_space(automl_file(tmp_path))
    cfg = s.config({"method": "filtered", "latent:lr": 50.0, "filtered:alpha": 0.01})
    assert cfg.hparams["alpha"] == 0.01 and "lr" not in cfg.hparams
    lat = s.config({"method": "latent", "latent:lr": 50.0, "filtered:alpha": 0.01})
    assert lat.hparams["lr"] == 50.0 and "alpha" not in lat.hparams


def test_define_by_run_samples_a_method_and_only_its_own_parameters():
    import optuna

    s = load_space(ROOT / "search_spaces" / "automl.yaml")
    fn = pickle.loads(pickle.dumps(s.sampler_space()))  # Ray pickles the searcher, and this with it
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        t = study.ask()
        fn(t)
        m = t.params["method"]
        seen.add(m)
        for name in t.params:
            assert name in ("method", "arch_args.widths") or name.startswith(m + ":"), (m, name)
        if m == "proxconnect":
            assert ("proxconnect:mu0" in t.params) == (t.params["proxconnect:pair"] in ("bnn++", "pc"))
        s.config(t.params)  # every sampled point resolves
        study.tell(t, [0.5, 1.0])
    assert seen == set(s.methods)


def test_structural_parameters_of_a_pack():
    s = load_space(ROOT / "search_spaces" / "automl.yaml")
    by = {p.name: p for p in s.params}
    assert s.structural(by["method"]) and s.structural(by["arch_args.widths"])
    assert not s.structural(by["latent:lr"]) and not s.structural(by["filtered:alpha"])


def test_warm_start_takes_the_front_that_fits_this_space(tmp_path):
    """Recorded trials (real MLflow store, resolved configs as params) -> the points a new study
    enqueues: only complete ones whose searched values lie inside the new space, the front under
    the new objectives and constraints, each once."""
    from bnnsearch.automl import point_from_params, warm_points
    from bnnsearch.tracking import Tracker

    s = load_space(automl_file(tmp_path))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    t = Tracker(uri, "old")
    parent = t.start_study("old-study", tags={}, params={})

    def trial(tid, cfg_values, metrics, status="complete"):
        cfg = s.config(cfg_values).to_dict()
        rid = t.start_trial(parent, tid, tid, cfg, "old-study")
        t.set_tags(rid, {"bnnsearch.status": status})
        t.log_metrics(rid, metrics, step=1)
        return cfg

    w32 = "yaml:[32, 32]"
    trial("a", {"method": "latent", "arch_args.widths": w32, "latent:lr": 10.0}, {"val/acc": 0.9, "cost/mem_bits": 9e4})
    trial("b", {"method": "filtered", "arch_args.widths": "yaml:[16, 16]", "filtered:alpha": 0.01},
          {"val/acc": 0.8, "cost/mem_bits": 4e4})
    trial("c", {"method": "latent", "arch_args.widths": w32, "latent:lr": 10.0}, {"val/acc": 0.9, "cost/mem_bits": 9e4})  # same config
    trial("d", {"method": "latent", "arch_args.widths": "yaml:[64, 64]", "latent:lr": 20.0},
          {"val/acc": 0.99, "cost/mem_bits": 2e5})  # infeasible here (over 150000)
    trial("e", {"method": "latent", "arch_args.widths": w32, "latent:lr": 20.0}, {"val/acc": 0.5, "cost/mem_bits": 9e4})  # dominated
    trial("f", {"method": "latent", "arch_args.widths": w32, "latent:lr": 30.0}, {"val/acc": 0.95, "cost/mem_bits": 9e4},
          status="stopped early")
    narrow = load_space(automl_file(tmp_path, methods={"latent": {"params": {"lr": {"float": [0.1, 5.0], "log": True}}}}))
    points, note = warm_points(s, uri, "old")
    assert sorted(points, key=str) == sorted([{"method": "latent", "arch_args.widths": w32, "latent:lr": 10.0},
                                              {"method": "filtered", "arch_args.widths": "yaml:[16, 16]",
                                               "filtered:alpha": 0.01}], key=str), points
    assert "2 of its 5 complete trials" in note
    assert warm_points(narrow, uri, "old")[0] == []  # lr 10 and 20 lie outside [0.1, 5]
    assert point_from_params(s, {"method": "latent"}) is None  # a value it would sample is missing
    from bnnsearch.errors import UserError

    with pytest.raises(UserError, match="--warm-start 'nope': no such experiment"):
        warm_points(s, uri, "nope")


# --- fronts, hypervolume, constraints ---------------------------------------------------------

def _pt(acc, mem, feasible=True, status="complete"):
    return {"objectives": [acc, mem], "feasible": feasible, "status": status}


def test_pareto_front_by_hand():
    pts = [_pt(0.9, 100), _pt(0.8, 50), _pt(0.85, 120),  # (0.85, 120) is dominated by (0.9, 100)
           _pt(0.95, 10, feasible=False), _pt(0.99, 1, status="diverged"), _pt(0.8, 50), _pt(0.5, 20)]
    front = pareto_front(pts, MO)
    assert [p["objectives"] for p in front] == [[0.9, 100], [0.8, 50], [0.8, 50], [0.5, 20]]  # ties: both kept
    assert dominates([0.9, 100], [0.85, 120], MO) and not dominates([0.8, 50], [0.9, 100], MO)
    assert not dominates([0.8, 50], [0.8, 50], MO)
    ranked = [{"rank": i + 1, "objectives": dict(zip("am", p["objectives"]))} for i, p in enumerate(front)]
    assert front_ties(ranked) == ["ranks 2, 3 tie on every objective (different configurations; --pick chooses)"]
    assert front_ties(ranked[:2] + ranked[3:]) == []


def test_hypervolume_by_hand():
    # maximise acc (ref 0), minimise mem (ref 200): rectangles 0.9*(200-100) + 0.8*(100-50) + 0.5*(50-20)
    vol = hypervolume([[0.9, 100], [0.8, 50], [0.5, 20], [0.85, 120]], MO, [0.0, 200.0])
    assert vol == pytest.approx(0.9 * 100 + 0.8 * 50 + 0.5 * 30)
    assert hypervolume([[0.9, 300]], MO, [0.0, 200.0]) == 0.0  # beyond the reference: adds nothing
    assert hypervolume([], MO, [0.0, 200.0]) == 0.0
    # 3-D: two boxes from the origin-side corner to ref (1, 1, 1), minimised: union = 0.5 + 0.5 - 0.25
    three = [("a", "min")] * 3
    assert hypervolume([[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]], three, [1.0, 1.0, 1.0]) == pytest.approx(0.75)
    # against a brute-force grid count for random points
    import random

    rng = random.Random(0)
    pts = [[rng.random(), rng.random(), rng.random()] for _ in range(6)]
    n = 40
    grid = sum(any(all(p[d] <= c[d] for d in range(3)) for p in pts)
               for c in ([(i + .5) / n, (j + .5) / n, (k + .5) / n] for i in range(n) for j in range(n) for k in range(n)))
    assert hypervolume(pts, three, [1.0, 1.0, 1.0]) == pytest.approx(grid / n ** 3, abs=0.02)


def test_hypervolume_on_a_log_axis_by_hand():
    # acc (ref 0) against gates in log10 (ref 1e15 -> 15): 0.9 at 1e14, 0.8 at 1e11, 0.5 at 1e9
    pts = [[0.9, 1e14], [0.8, 1e11], [0.5, 1e9]]
    vol = hypervolume(pts, MO, [0.0, 1e15], log_axes=(False, True))
    assert vol == pytest.approx(0.9 * (15 - 14) + 0.8 * (14 - 11) + 0.5 * (11 - 9))
    # on the linear axis the cheap points add almost nothing: the accuracy axis dominates
    assert hypervolume(pts, MO, [0.0, 1e15]) == pytest.approx(0.9 * 0.9e15 + 0.8 * (1e14 - 1e11) + 0.5 * (1e11 - 1e9))


def test_log_axes_reach_the_space_and_the_sampler(tmp_path):
    """``log: true``: the space keeps it per objective, and the searcher tells Optuna log10 of
    that objective (real Ray OptunaSearch and Optuna study; the recorded value stays raw)."""
    import math

    import optuna

    from bnnsearch.results import objective_keys
    from bnnsearch.searcher import searcher_cls

    s = load_space(automl_file(tmp_path, objectives=[{"metric": "val/acc", "mode": "max"},
                                                     {"metric": "cost/train_gates", "mode": "min", "ref": 1e15,
                                                      "log": True}]))
    assert s.log_axes == (False, True) and s.refs == (0.0, 1e15)
    assert s.objectives_text() == "max val/acc, min cost/train_gates (log10)"  # as space and automl print it
    assert load_space(automl_file(tmp_path)).log_axes == ()
    from bnnsearch.errors import ConfigError

    with pytest.raises(ConfigError, match="needs two or more objectives"):
        load_space(automl_file(tmp_path, objectives=[{"metric": "cost/bops", "mode": "min", "log": True}]))
    keys = objective_keys(s)
    searcher = searcher_cls()(space=s.sampler_space(), metric=keys, mode=["max", "min"],
                               sampler=optuna.samplers.RandomSampler(seed=0), full_epochs=2,
                               journal=str(tmp_path / "journal.jsonl"), log_keys=(keys[1],))
    assert searcher.suggest("t1") is not None
    searcher.on_trial_complete("t1", {keys[0]: 0.8, keys[1]: 1e12, "epoch": 2})
    (t,) = searcher._ot_study.trials
    assert t.values == [0.8, pytest.approx(12.0)] and not math.isclose(t.values[1], 1e12)


@pytest.mark.parametrize("objective, needle", [
    ({"metric": "val/acc", "mode": "max", "log": True}, "log: true is for a cost that is minimised"),
    ({"metric": "cost/train_gates", "mode": "min", "ref": 1e15, "log": "yes"}, "log must be true or false"),
    ({"metric": "time/total_s", "mode": "min", "ref": 0.0, "log": True}, "a log axis needs a positive reference"),
])
def test_bad_log_axes_are_refused(tmp_path, objective, needle):
    from bnnsearch.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        load_space(automl_file(tmp_path, objectives=[{"metric": "val/acc", "mode": "max"}, objective]
                               if objective["metric"] != "val/acc" else [objective, {"metric": "cost/mem_bits",
                                                                                     "mode": "min"}]))


def test_constraint_values_are_optuna_style(tmp_path):
    s = load_space(automl_file(tmp_path, constraints={"cost/mem_bits": {"max": 100.0}, "val/acc": {"min": 0.5}}))
    assert constraint_values({"cost/mem_bits": 80.0, "val/acc": 0.7}, s) == {
        "cost/mem_bits:max": -20.0, "val/acc:min": pytest.approx(-0.2)}
    c = constraint_values({"cost/mem_bits": 120.0}, s)
    assert c["cost/mem_bits:max"] == 20.0 and c["val/acc:min"] > 0  # a missing metric is infeasible


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp", "botorch"])
def test_multi_objective_samplers_respect_constraints(sampler):
    """Each sampler, as the study builds it, on a real Optuna study of the shipped hierarchy:
    two objectives, a constraint set through trial.set_constraint; the front it reports holds
    only feasible trials."""
    import optuna

    from bnnsearch.searcher import make_sampler

    s = load_space(ROOT / "search_spaces" / "automl.yaml")
    smp = make_sampler(sampler, 0, 4, conditional=True, objectives=2)
    if sampler == "botorch":
        from optuna_integration.botorch import qnehvi_candidates_func

        assert smp._candidates_func is qnehvi_candidates_func
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=smp)
    fn = s.sampler_space()
    for i in range(5):  # 4 start-up trials, then one model-based proposal (BoTorch's costs ~20 s on 2 cores)
        t = study.ask()
        fn(t)
        cfg = s.config(t.params)
        mem = float(sum(cfg.arch_args.get("widths", [1])))
        acc = (i % 4) / 4
        t.set_constraint("cost/mem_bits:max", mem - 600)  # widths summing over 600 are infeasible
        study.tell(t, [acc, mem])
    assert len(study.trials) == 5 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert all(max(t.constraints.values()) <= 0 for t in study.best_trials)


def _synthetic_study(sampler, space, n=24, seed=0):
    """A real Optuna study of the shipped hierarchy on a synthetic objective: latent is the best
    method, and its accuracy peaks at lr = 1e-2 (falls 0.1 per decade away from it)."""
    import optuna

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    fn = space.sampler_space()
    for i in range(n):
        t = study.ask()
        fn(t)
        m = t.params["method"]
        acc = {"latent": 0.9, "filtered": 0.7}.get(m, 0.5) + 0.01 * (i % 3)
        if m == "latent":
            import math

            acc -= 0.1 * abs(math.log10(t.params["latent:lr"]) + 2)
        cfg = space.config(t.params)
        t.set_constraint("cost/mem_bits:max", -1.0)
        study.tell(t, [acc, float(sum(cfg.arch_args["widths"]))])
    return study


def test_tpe_cover_tries_every_method_first_then_models():
    """--sampler tpe-cover: the start-up covers the six methods (grouped TPE's own random start
    need not: with seed 0 and 6 start-up trials it misses one), then TPE's model takes over and
    concentrates on the best method (latent, on the synthetic objective)."""
    import pickle

    from bnnsearch.searcher import make_sampler

    s = load_space(ROOT / "search_spaces" / "automl.yaml")
    pickle.loads(pickle.dumps(make_sampler("tpe-cover", 0, 5, True, methods=s.methods)))  # Ray snapshots it
    cover = _synthetic_study(make_sampler("tpe-cover", 0, 5, True, objectives=2, methods=s.methods), s, n=30)
    order = [t.params["method"] for t in cover.trials]
    assert sorted(order[:6]) == sorted(s.methods)  # max(5, 6 methods) trials, each method once
    assert order[6:].count("latent") >= 8, order  # 1/6 of 24 is 4: the model prefers latent
    plain = _synthetic_study(make_sampler("tpe", 0, 6, True, objectives=2, methods=s.methods), s, n=6)
    assert len({t.params["method"] for t in plain.trials}) < 6  # the same seed without cover misses one


@pytest.mark.slow  # two 24-trial GP studies: about 40 s on 2 cores
def test_the_bandit_models_each_methods_own_parameters():
    """Plain GP draws latent:lr at random (it is not in every trial); the bandit's per-method GP
    models it: its latent trials after the start-up close in on the optimum, and it tries every
    method before it exploits."""
    import math

    from bnnsearch.hierarchy import MethodBandit
    from bnnsearch.searcher import make_sampler

    s = load_space(ROOT / "search_spaces" / "automl.yaml")
    bandit = _synthetic_study(make_sampler("bandit", 0, 6, True, objectives=2, methods=s.methods), s)
    assert isinstance(bandit.sampler, MethodBandit)
    order = [t.params["method"] for t in bandit.trials]
    assert set(order[:6]) == set(s.methods)  # every method once before UCB
    gp = _synthetic_study(make_sampler("gp", 0, 6, True, objectives=2), s)

    def late_error(study):
        lrs = [t.params["latent:lr"] for t in study.trials[12:] if t.params["method"] == "latent"]
        return lrs, sum(abs(math.log10(x) + 2) for x in lrs) / max(1, len(lrs))

    b_lrs, b_err = late_error(bandit)
    g_lrs, g_err = late_error(gp)
    assert len(b_lrs) >= 5 and b_err < 0.5, b_lrs  # within half a decade of the optimum on average
    assert b_err < g_err or not g_lrs, (b_lrs, g_lrs)


def _shut_out(seed: int, n: int = 20) -> tuple[dict, dict]:
    """The automl-cost failure, synthetic: wide nets are infeasible for the five gradient methods
    (their full-precision first and last layers), every local_binary net is feasible and on the
    front. Per method, its trials and its feasible trials in an n-trial bandit study."""
    import optuna

    from bnnsearch.searcher import make_sampler

    s = load_space(ROOT / "search_spaces" / "automl.yaml")
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler("bandit", seed, 6, True, objectives=2, methods=s.methods))
    fn = s.sampler_space()
    for _ in range(n):
        t = study.ask()
        fn(t)
        m, widths = t.params["method"], s.config(t.params).arch_args["widths"]
        ok = m == "local_binary" or max(widths) == 64
        t.set_constraint("cost/mem_bits:max", -1.0 if ok else 1.0)
        study.tell(t, [0.8 if m == "local_binary" else 0.9, 1.0 if m == "local_binary" else 100.0])
    tried = {m: [t for t in study.trials if t.params["method"] == m] for m in s.methods}
    return ({m: len(v) for m, v in tried.items()},
            {m: sum(max(t.constraints.values()) <= 0 for t in v) for m, v in tried.items()})


def test_the_bandit_does_not_judge_a_method_by_an_infeasible_start(monkeypatch):
    """A method whose start-up trial drew an infeasible width (a shared parameter) is tried again,
    up to COVER_TRIES trials, before UCB judges it: every method ends with a feasible trial or
    COVER_TRIES trials. With one try (the rule before docs/results/automl-cost) the same seed
    shuts a gradient method out after its one infeasible trial — the accurate method, here."""
    import bnnsearch.hierarchy as h

    count, feasible = _shut_out(seed=1)
    assert all(feasible[m] or count[m] >= h.COVER_TRIES for m in count), (count, feasible)
    monkeypatch.setattr(h, "COVER_TRIES", 1)
    count, feasible = _shut_out(seed=1)
    assert any(count[m] == 1 and not feasible[m] for m in count), (count, feasible)


# --- the registered network --------------------------------------------------------------

CASES = {"latent": {}, "filtered": {}, "proxconnect": {"pair": "pc", "hard_phase": 0.3},
         "cyclebnn": {"b_min": 2, "b_max": 6}, "hbnn": {"granularity": "layer"}, "local_binary": {"group_size": 8}}


def _trained(method, hp, tmp_path):
    from bnnsearch.config import resolve
    from bnnsearch.engine import fit, load_data
    from bnnsearch.modelio import BinaryNet

    arch = {"arch_args": {"widths": [48, 48], "input_levels": 3}} if method == "local_binary" else {"arch": "mlp", "arch_args": {"widths": [32, 32]}}
    cfg = resolve({"method": method, "data": "digits", "epochs": 2, "batch_size": 64, "seed": 1, "device": "cpu",
                   "threads": 1, "hparams": hp, "data_root": str(tmp_path / "data"), **arch})
    res = fit(cfg)
    data = load_data(cfg, "cpu")
    return cfg, res, data, BinaryNet(res.model, cfg.to_dict(), data.in_shape, data.num_classes).eval()



@pytest.mark.parametrize("sampler", ["gp", "bandit"])
def test_the_gp_search_is_quiet_about_a_flat_acquisition(sampler):
    """Optuna's GP search divides by a zero sum once its acquisition is flat (numpy warns from
    optuna._gp.optim_mixed) and logs that the study converged: neither says anything wrong, and
    an automl study printed 66 per 1,000 trials. The same division elsewhere still warns."""
    import logging
    import warnings

    from bnnsearch.searcher import make_sampler

    flat = "import numpy as np\np = np.zeros(3)\np /= p.sum()\n"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        make_sampler(sampler, 0, 4, True, methods=["latent", "filtered"])
        exec(compile(flat, "optim_mixed.py", "exec"), {"__name__": "optuna._gp.optim_mixed"})
        assert not seen
        exec(compile(flat, "elsewhere.py", "exec"), {"__name__": "bnnsearch.elsewhere"})
        assert [type(w.message) for w in seen] == [RuntimeWarning]
    assert not logging.getLogger("optuna._gp.optim_mixed").isEnabledFor(logging.WARNING)
    assert logging.getLogger("optuna.samplers").isEnabledFor(logging.WARNING)

def test_the_botorch_sampler_does_not_warn_that_it_is_experimental():
    """Optuna marks BoTorchSampler and its acquisition functions experimental: a warning when the
    sampler is built and one per proposal, twice per study in a comparison's log, nothing a user
    acts on. Both are silenced (a real study of 4 proposals after 2 random ones), and so is the
    deprecation of torch.jit.script that GPyTorch triggers; Optuna's other experimental warnings
    are not."""
    import warnings

    import optuna

    from bnnsearch.searcher import make_sampler

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        study = optuna.create_study(direction="maximize", sampler=make_sampler("botorch", 0, 2))
        study.optimize(lambda t: -(t.suggest_float("x", -1.0, 1.0) - 0.3) ** 2, n_trials=6)
        assert not seen, [str(w.message) for w in seen]  # nor torch.jit.script's deprecation (GPyTorch)
        optuna.samplers.TPESampler(seed=0, multivariate=True, group=True)  # another one still warns
        assert seen and all(w.category is optuna.exceptions.ExperimentalWarning for w in seen)


@pytest.mark.parametrize("method", list(CASES))
def test_a_pickled_network_reloads_exactly(method, tmp_path):
    from bnnsearch.modelio import test_accuracy

    cfg, res, data, net = _trained(method, CASES[method], tmp_path)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(net(data.x_test), back(data.x_test))
    assert test_accuracy(back, threads=1)[0] == res.final["test/acc"]
    if method == "cyclebnn":  # the final bit width is a plain attribute, not in the state dict
        from bnnsearch.modelio import module_scalars

        assert any("k" in v for v in module_scalars(net.net).values())


def test_cyclebnns_tau_clamp_travels_with_the_network(tmp_path):
    """ReCU's tau (a plain attribute set by the schedule, not in the state dict) moves CycleBNN's
    evaluation grid: a .bnn file and its reload evaluate exactly as the trained network."""
    from bnnsearch.modelio import export_bnn, load_bnn, module_scalars, test_accuracy

    cfg, res, data, net = _trained("cyclebnn", {"b_min": 2, "b_max": 6, "tau_clamp": True}, tmp_path)
    taus = [v["tau"] for v in module_scalars(net.net).values() if "tau" in v]
    assert taus and taus == pytest.approx([res.final["sched/tau"]] * len(taus)) and res.final["sched/tau"] < 1
    export_bnn(net, tmp_path / "net.bnn", data.x_test)
    back = load_bnn(tmp_path / "net.bnn")
    with torch.no_grad():
        assert torch.equal(net(data.x_test), back(data.x_test))
    assert test_accuracy(back, threads=1)[0] == res.final["test/acc"]


# Where the eval forward depends on the signs of the stored binary weights alone, they are packed;
# CycleBNN (multi-bit at the end of its cycle here) and HBNN (signs of the exponential map of
# weight and cluster point) keep their storage full precision, and say so.
PACKED = {"latent": True, "filtered": True, "proxconnect": True, "local_binary": True, "cyclebnn": False, "hbnn": False}


@pytest.mark.parametrize("method", list(CASES))
def test_a_bnn_file_round_trips_exactly(method, tmp_path):
    import numpy as np

    from bnnsearch.modelio import export_bnn, load_bnn, test_accuracy

    cfg, res, data, net = _trained(method, CASES[method], tmp_path)
    rep = export_bnn(net, tmp_path / "net.bnn", data.x_test)
    back = load_bnn(tmp_path / "net.bnn")
    with torch.no_grad():
        assert torch.equal(net(data.x_test), back(data.x_test))
    assert test_accuracy(back, threads=1)[0] == res.final["test/acc"]
    assert (not rep["full_precision_storage"]) == PACKED[method], rep
    if PACKED[method]:  # one bit per binary weight in the file
        d = torch.load(tmp_path / "net.bnn", weights_only=True)
        from bnnsearch.methods import get_method

        names = {id(t): k for k, t in net.net.state_dict(keep_vars=True).items()}
        for t in get_method(method).binary_storage(net.net):
            b = d["binary"][names[id(t)]]
            assert b["bits"].dtype == torch.uint8 and b["bits"].numel() == -(-t.numel() // 8)
            signs = np.unpackbits(b["bits"].numpy())[: t.numel()]
            assert (signs == (t.detach().flatten().numpy() >= 0)).all()


@pytest.mark.slow
@pytest.mark.parametrize("method", list(CASES))
def test_the_mlflow_model_of_every_method_scores_exactly(method, tmp_path):
    """What the registry stores (MLflow's pt2 format: a torch.export graph) gives the engine's
    own logits and test accuracy, for every method."""
    import mlflow.pytorch

    from bnnsearch.modelio import test_accuracy

    cfg, res, data, net = _trained(method, CASES[method], tmp_path)
    mlflow.pytorch.save_model(net, str(tmp_path / "m"), input_example=data.x_test[:5].numpy())
    g = mlflow.pytorch.load_model(str(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(net(data.x_test), g(data.x_test))
    assert test_accuracy(g, cfg.to_dict(), threads=1)[0] == res.final["test/acc"]


# --- end to end ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    """The in-process studies below share one local Ray, shut down after them (a Ray left
    initialized would make the next module's ray.init fail)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, ray_local):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_automl_study_front_registry_and_evaluate(in_tmp, capsys):
    from mlflow.tracking import MlflowClient

    from bnnsearch.cli import main

    space = automl_file(in_tmp)
    argv = ["automl", str(space), "--trials", "8", "--startup-trials", "4", "--register", "--out", "out"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "registered models:/bnnsearch-digits/1" in out
    doc = json.loads((in_tmp / "out" / "pareto.json").read_text())
    assert all(line in out for line in front_ties(doc["front"]))
    c = MlflowClient(f"sqlite:///{in_tmp}/mlflow.db", registry_uri=f"sqlite:///{in_tmp}/mlflow.db")
    exp = c.get_experiment_by_name("bnnsearch/digits/automl")
    parent = c.search_runs([exp.experiment_id], "tags.`bnnsearch.kind` = 'study'")[0]
    kids = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(kids) == 8 and parent.info.status == "FINISHED"
    # the front, recomputed from what MLflow recorded of every trial
    pts = [{"objectives": json.loads(k.data.tags["bnnsearch.objectives"]), "status": k.data.tags["bnnsearch.status"],
            "feasible": k.data.tags["bnnsearch.feasible"] == "1", "run": k.info.run_id} for k in kids]
    for p, k in zip(pts, kids):  # the recorded objectives and feasibility are the trial's own metrics
        assert p["objectives"] == [k.data.metrics["val/acc"], k.data.metrics["cost/mem_bits"]]
        assert p["feasible"] == (k.data.metrics["cost/mem_bits"] <= 150000)
    front = pareto_front(pts, MO)
    assert sorted(p["run"] for p in front) == sorted(p["run_id"] for p in doc["front"]) and front
    assert all(p["objectives"]["cost/mem_bits"] <= 150000 for p in doc["front"])
    assert {p["method"] for p in doc["front"]} <= {"latent", "filtered", "local_binary"}
    assert "pareto.json" in {a.path for a in c.list_artifacts(parent.info.run_id)}
    hv = [m.value for m in sorted(c.get_metric_history(parent.info.run_id, "hypervolume"), key=lambda m: m.step)]
    assert len(hv) == 8 and hv == sorted(hv) and hv[-1] == pytest.approx(doc["hypervolume"])
    assert doc["hypervolume"] == pytest.approx(hypervolume([p["objectives"] for p in front], MO, [0.0, 150000.0]))
    # the registered network: retrained with the trial's seed, it is the trial (CPU, same threads)
    mv = c.get_model_version("bnnsearch-digits", "1")
    model_run = c.get_run(mv.run_id)
    best = doc["front"][0]
    assert model_run.data.tags["bnnsearch.source_run"] == best["run_id"]
    assert model_run.data.metrics["test/acc"] == c.get_run(best["run_id"]).data.metrics["test/acc"]
    assert {"config.yaml", "cost.json"} <= {a.path for a in c.list_artifacts(mv.run_id)}
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{in_tmp}/mlflow.db")
    from bnnsearch.modelio import test_accuracy

    g = mlflow.pytorch.load_model("models:/bnnsearch-digits/1")
    info = mlflow.models.get_model_info("models:/bnnsearch-digits/1")
    assert info.signature is not None
    assert test_accuracy(g, info.metadata["bnnsearch_config"])[0] == model_run.data.metrics["test/acc"]
    assert main(["evaluate", "models:/bnnsearch-digits/1"]) == 0
    assert "-> equal" in capsys.readouterr().out
    # the exported file: one bit per binary weight, read back exactly, scored against the run's record
    assert main(["export", "models:/bnnsearch-digits/1", "--out", "net.bnn"]) == 0
    assert "logits identical" in capsys.readouterr().out
    assert main(["evaluate", "net.bnn"]) == 0
    assert f"recorded in MLflow run {mv.run_id}" in capsys.readouterr().out
    # a write that fails after the checks passed (a full disk): one line, the earlier file kept whole
    from bnnsearch import runio

    def full(tmp):
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runio, "write_whole", lambda path, write, unique=False: full(path))
        assert main(["export", "models:/bnnsearch-digits/1", "--out", "net.bnn"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "bnnsearch: error: --out net.bnn: cannot write there (No space left on device)"]
    assert main(["evaluate", "net.bnn"]) == 0
    capsys.readouterr()
    # a second study warm-started from this one evaluates this front first
    # (and asks for a front point it does not have: the study stays recorded, the error says why)
    assert main(["automl", str(space), "--trials", "1", "--startup-trials", "1", "--name", "warm",
                 "--warm-start", "bnnsearch/digits/automl", "--experiment", "warm", "--out", "out2",
                 "--register", "other", "--pick", "2"]) == 2
    cap = capsys.readouterr()
    assert "--warm-start bnnsearch/digits/automl:" in cap.out and "--pick 2: the front has 1 point(s)" in cap.err
    assert (in_tmp / "out2" / "pareto.json").exists()
    wexp = c.get_experiment_by_name("warm")
    (first,) = c.search_runs([wexp.experiment_id], "tags.`bnnsearch.kind` = 'trial'")
    top = [c.get_run(p["run_id"]).data.params for p in doc["front"] if p["objectives"] == doc["front"][0]["objectives"]]
    assert first.data.params in top  # the same resolved config as the front's best
    (wparent,) = c.search_runs([wexp.experiment_id], "tags.`bnnsearch.kind` = 'study'")
    assert wparent.data.params["warm_start"] == "bnnsearch/digits/automl"
    for flags, now in ((["--warm-start", "other"], "other"), ([], "none")):  # a resume names the same one
        assert main(["automl", str(space), "--trials", "1", "--startup-trials", "1", "--name", "warm",
                     "--experiment", "warm", "--out", "out2", "--resume", *flags]) == 2
        assert (f"study 'warm' was run with --warm-start bnnsearch/digits/automl (now {now})"
                in capsys.readouterr().err)
    # the dashboard draws the front and lists its points
    assert main(["dashboard", "--export", "d.html"]) == 0
    page = (in_tmp / "d.html").read_text()
    assert "AutoML front" in page and "hypervolume vs trial" in page
    assert "objective vs modelled training cost (Boolean gates)" in page  # every method in one unit
    assert all(p["run_id"] in page for p in doc["front"])



@pytest.mark.slow
def test_automl_on_training_costs_under_a_bops_limit(in_tmp, capsys):
    """The cost objectives besides memory: accuracy against the CPU seconds each trial's process
    measured (``time/total_cpu_s``, a measured and so noisy objective) and against the modelled
    training cost (``cost/train_gates``, every method in one unit), under a hard limit on the
    modelled BOPs. Each trial's recorded objectives are its own final metrics, its feasibility is
    its BOPs against the limit, and the front is the one recomputed from MLflow's record."""
    from mlflow.tracking import MlflowClient

    from bnnsearch.cli import main

    objectives = [("val/acc", "max"), ("time/total_cpu_s", "min"), ("cost/train_gates", "min")]
    limit = 2000.0  # a binary 16x16 or 32x32 hidden layer fits (256, 1024 BOPs), 64x64 (4096) does not
    space = automl_file(in_tmp, objectives=[{"metric": "val/acc", "mode": "max"},  # unbounded costs need a ref
                                            {"metric": "time/total_cpu_s", "mode": "min", "ref": 600.0},
                                            {"metric": "cost/train_gates", "mode": "min", "ref": 1e16,
                                             "log": True}],
                        constraints={"cost/bops": {"max": limit}})
    assert main(["automl", str(space), "--trials", "6", "--startup-trials", "6", "--out", "out"]) == 0
    assert "Pareto front" in capsys.readouterr().out
    c = MlflowClient(f"sqlite:///{in_tmp}/mlflow.db")
    exp = c.get_experiment_by_name("bnnsearch/digits/automl")
    (parent,) = c.search_runs([exp.experiment_id], "tags.`bnnsearch.kind` = 'study'")
    kids = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(kids) == 6
    pts = []
    for k in kids:
        obj = json.loads(k.data.tags["bnnsearch.objectives"])
        assert obj == [k.data.metrics[m] for m, _ in objectives] and obj[1] > 0 and obj[2] > 0
        feasible = k.data.tags["bnnsearch.feasible"] == "1"
        assert feasible == (k.data.metrics["cost/bops"] <= limit)
        pts.append({"objectives": obj, "status": k.data.tags["bnnsearch.status"], "feasible": feasible,
                    "run": k.info.run_id})
    assert {p["feasible"] for p in pts} == {True, False}  # seed 0's draws lie on both sides of the limit
    doc = json.loads((in_tmp / "out" / "pareto.json").read_text())
    assert sorted(p["run"] for p in pareto_front(pts, objectives)) == sorted(p["run_id"] for p in doc["front"])
    assert doc["front"] and all(p["objectives"]["time/total_cpu_s"] > 0 for p in doc["front"])
    # the training-cost axis in log10: the study's hypervolume, and its record after every trial
    assert doc["objectives"][2] == {"metric": "cost/train_gates", "mode": "min", "log": True}
    front = [list(p["objectives"].values()) for p in doc["front"]]
    assert doc["hypervolume"] == pytest.approx(hypervolume(front, objectives, [0.0, 600.0, 1e16], (False, False, True)))
    hv = [m.value for m in sorted(c.get_metric_history(parent.info.run_id, "hypervolume"), key=lambda m: m.step)]
    assert hv[-1] == pytest.approx(doc["hypervolume"]) and hv == sorted(hv)


@pytest.mark.slow
def test_time_budget_ends_a_study_that_is_not_an_interrupt(in_tmp, capsys):
    from bnnsearch.cli import main

    space = automl_file(in_tmp, objectives=[{"metric": "val/acc", "mode": "max"}],
                        fixed={"data": "digits", "epochs": 200, "batch_size": 16, "device": "cpu", "threads": 1,
                               "data_root": str(in_tmp / "data")})
    assert main(["automl", str(space), "--time-budget", "15s", "--sampler", "gp", "--startup-trials", "2"]) == 0
    cap = capsys.readouterr()
    assert "--sampler gp models only the parameters every trial samples (method, arch_args.widths)" in cap.out
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{in_tmp}/mlflow.db")
    exp = c.get_experiment_by_name("bnnsearch/digits/automl")
    parent = c.search_runs([exp.experiment_id], "tags.`bnnsearch.kind` = 'study'")[0]
    assert parent.data.tags["bnnsearch.status"] == "finished" and parent.info.status == "FINISHED"
    kids = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    # 200 epochs of batch 16 do not fit in 15 s: the running trials were stopped, and said so
    stopped = [k for k in kids if k.data.tags["bnnsearch.status"] == "stopped early"]
    assert stopped and all(k.data.tags["bnnsearch.stopped_by"] == "time budget" for k in stopped)
    assert all(k.info.status in ("FINISHED", "KILLED") for k in kids)
    # every trial counted once in the parent's record, none with a full-budget value
    states = {m.step: m.value for m in c.get_metric_history(parent.info.run_id, "trial_state")}
    assert sorted(states) == list(range(1, len(kids) + 1))
    assert sorted(int(k.data.tags["bnnsearch.trial_index"]) for k in kids) == list(range(1, len(kids) + 1))


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["bandit", "tpe-cover"])
def test_the_method_samplers_run_an_automl_study(in_tmp, capsys, sampler):
    """A real study (Ray Tune snapshots the searcher, sampler included, after every event): both
    samplers' first three suggestions are the three methods (read from the study's journal of
    suggestions, in the order they were asked; trials finish in another order)."""
    from bnnsearch.cli import main
    from bnnsearch.searcher import read_journal

    assert main(["automl", str(automl_file(in_tmp)), "--trials", "4", "--sampler", sampler, "--startup-trials", "2"]) == 0
    out = capsys.readouterr().out
    assert f"study automl-digits-{sampler}-s0: 4 complete" in out and "warning:" not in out
    asked = [e["params"]["method"] for e in read_journal(in_tmp / "bnnsearch_runs" / f"automl-digits-{sampler}-s0")]
    assert len(asked) == 4 and set(asked[:3]) == {"latent", "filtered", "local_binary"}, asked


@pytest.mark.slow
def test_packed_automl_study_records_every_member_with_every_objective(in_tmp, capsys):
    """--pack with several objectives: Ray checks that a pack's result names every objective the
    searcher is told (a packed AutoML study failed on the first epoch without it); each member is
    its own trial with both objectives, the parent's hypervolume has a step per member and the
    front is made of members. Method and widths are sampled once per pack (structural)."""
    from mlflow.tracking import MlflowClient

    from bnnsearch.cli import main

    space = automl_file(in_tmp, methods={"latent": {"params": {"lr": {"float": [0.1, 100.0], "log": True}}},
                                         "filtered": {"params": {"alpha": {"float": [1e-4, 1e-1], "log": True}}}})
    assert main(["automl", str(space), "--trials", "4", "--pack", "2", "--startup-trials", "2", "--out", "out"]) == 0
    out = capsys.readouterr().out
    assert "sampled once per pack, shared by its members" in out and "4 complete" in out
    c = MlflowClient(f"sqlite:///{in_tmp}/mlflow.db")
    exp = c.get_experiment_by_name("bnnsearch/digits/automl")
    (parent,) = c.search_runs([exp.experiment_id], "tags.`bnnsearch.kind` = 'study'")
    kids = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(kids) == 4 and all(k.info.status == "FINISHED" for k in kids)
    packs = {}
    for k in kids:
        assert json.loads(k.data.tags["bnnsearch.objectives"]) == [k.data.metrics["val/acc"], k.data.metrics["cost/mem_bits"]]
        packs.setdefault(k.data.tags["bnnsearch.trial_id"].rsplit("#", 1)[0], []).append(k.data.params)
    assert len(packs) == 2 and all(len(v) == 2 for v in packs.values())
    for members in packs.values():  # one method and one network per pack
        assert len({(m["method"], m["arch_args.widths"]) for m in members}) == 1
    hv = [m.value for m in sorted(c.get_metric_history(parent.info.run_id, "hypervolume"), key=lambda m: m.step)]
    assert len(hv) == 4 and hv == sorted(hv)
    doc = json.loads((in_tmp / "out" / "pareto.json").read_text())
    assert doc["front"] and {p["run_id"] for p in doc["front"]} <= {k.info.run_id for k in kids}


def test_a_one_method_file_is_refused_by_automl(tmp_path, capsys):
    from bnnsearch.cli import main

    assert main(["automl", str(ROOT / "search_spaces" / "latent.yaml")]) == 2
    assert "a one-method space" in capsys.readouterr().err


@pytest.mark.slow
def test_register_honours_a_registry_of_its_own(in_tmp, capsys, monkeypatch):
    """`--registry-uri` (else MLflow's MLFLOW_REGISTRY_URI) is where `--register` registers the
    network and where `evaluate`/`export` look it up; the tracking store's registry stays empty.
    A registry that cannot work is refused before the study runs, naming the flag or variable."""
    from mlflow.tracking import MlflowClient

    from bnnsearch.cli import main

    space = automl_file(in_tmp)
    db, reg = f"sqlite:///{in_tmp}/mlflow.db", f"sqlite:///{in_tmp}/registry.db"
    base = ["automl", str(space), "--trials", "2", "--sampler", "random"]
    # bad registries: one line, exit 2, nothing run or recorded
    assert main([*base, "--register", "--registry-uri", f"sqlite:///{in_tmp}/no/such/registry.db"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"bnnsearch: error: --registry-uri sqlite:///{in_tmp}/no/such/registry.db: folder {in_tmp}/no/such does not exist"]
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", str(in_tmp / "plain"))
    assert main([*base, "--register"]) == 2
    assert capsys.readouterr().err.startswith(f"bnnsearch: error: MLFLOW_REGISTRY_URI {in_tmp / 'plain'}: a plain path")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI")
    assert main([*base, "--registry-uri", reg]) == 2
    assert "give --register too" in capsys.readouterr().err
    assert not (in_tmp / "mlflow.db").exists() and not (in_tmp / "registry.db").exists()

    assert main([*base, "--register", "--registry-uri", reg]) == 0
    out = capsys.readouterr().out
    assert f"in the Model Registry at {reg}" in out and f"--registry-uri {reg}" in out
    assert "MLFLOW_REGISTRY_URI" not in os.environ  # MLflow's setter writes it; read later as the user's choice
    assert [m.name for m in MlflowClient(db, registry_uri=reg).search_registered_models()] == ["bnnsearch-digits"]
    assert not MlflowClient(db, registry_uri=db).search_registered_models()
    # evaluate looks in the tracking store's registry by default: not there, one line
    assert main(["evaluate", "models:/bnnsearch-digits/1"]) == 2
    err = capsys.readouterr().err
    assert "models:/bnnsearch-digits/1: cannot load an MLflow PyTorch model" in err
    assert f"looked up in the Model Registry at {db} (--registry-uri names another)" in err
    assert main(["evaluate", "models:/bnnsearch-digits/1", "--registry-uri", f"sqlite:///{in_tmp}/none.db"]) == 2
    assert "--registry-uri" in capsys.readouterr().err and not (in_tmp / "none.db").exists()
    assert main(["evaluate", "models:/bnnsearch-digits/1", "--registry-uri", reg]) == 0
    assert "-> equal" in capsys.readouterr().out
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", reg)  # MLflow's own variable does the same
    assert main(["export", "models:/bnnsearch-digits/1", "--out", "net.bnn"]) == 0
    assert "logits identical" in capsys.readouterr().out
