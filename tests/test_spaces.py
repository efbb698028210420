from pathlib import Path

import optuna
import pytest
import yaml

from bnnsearch.errors import ConfigError
from bnnsearch.methods import list_methods
from bnnsearch.spaces import load_space

ROOT = Path(__file__).resolve().parents[1] / "search_spaces"
FILES = sorted(ROOT.glob("*.yaml"))


def test_one_space_per_method():  # and automl.yaml, where they all compete
    assert {load_space(f).method for f in FILES} == set(list_methods()) | {"automl"}


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_every_space_loads_compiles_and_samples(path):
    space = load_space(path)
    dists = space.distributions()
    assert dists and all(isinstance(d, optuna.distributions.BaseDistribution) for d in dists.values())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    define = space.sampler_space()
    for _ in range(10):  # sampled points (define-by-run where conditional) resolve into valid run configs
        if callable(define):
            trial = study.ask()
            define(trial)
        else:
            trial = study.ask(dists)
        cfg = space.config(trial.params)
        assert cfg.method == trial.params.get("method", space.method)
        study.tell(trial, 0.5)


def write(tmp_path, doc):
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(doc) if isinstance(doc, dict) else doc)
    return p


BASE = {"method": "filtered", "objective": {"metric": "val/acc", "mode": "max"},
        "fixed": {"data": "digits", "epochs": 2}, "params": {"alpha": {"float": [1e-5, 1e-1], "log": True}}}


@pytest.mark.parametrize("change,needle", [
    ({"bogus": 1}, "space.yaml: bogus: unknown key 'bogus'"),
    ({"method": "nope"}, "space.yaml: method: unknown method 'nope'"),
    ({"params": {"alpha": {"float": [0.1, 0.01]}}}, "params.alpha: low >= high"),
    ({"params": {"alpha": {"float": [0.0, 0.1], "log": True}}}, "params.alpha: log scale needs low > 0"),
    ({"params": {"alpha": {"float": ["a", 0.1]}}}, "params.alpha: bounds must be numbers"),
    ({"params": {"lr": {"float": [0.1, 1.0]}}}, "params.lr: unknown parameter"),
    ({"params": {"alpha": {"float": [1e-3, 2.0]}}}, "params.alpha: value 2.0 is invalid"),
    ({"params": {"alpha_decay": {"categorical": ["cosine", "sometimes"]}}}, "params.alpha_decay: value 'sometimes' is invalid"),
    ({"params": {"alpha": {"floaty": [1e-3, 0.1]}}}, "params.alpha: needs exactly one of float, int, categorical"),
    ({"objective": {"metric": "val/acc", "mode": "up"}}, "objective.mode: mode must be max or min"),
    ({"objective": {"metric": "val/f1"}}, "objective.metric: unknown metric 'val/f1'"),
    ({"fixed": {"epochs": "many"}}, "fixed.epochs: expected an integer"),
    ({"params": {"batch_size": {"int": [16, 8]}}}, "params.batch_size: low >= high"),
])
def test_bad_spaces_name_file_and_key(tmp_path, change, needle):
    doc = {**BASE, **change}
    with pytest.raises(ConfigError) as e:
        load_space(write(tmp_path, doc))
    assert needle in str(e.value), str(e.value)


def test_top_level_and_dotted_params(tmp_path):
    doc = {**BASE, "params": {"batch_size": {"categorical": [32, 64]}, "arch_args.widths": {"categorical": [[16, 16], [32, 32, 32]]}}}
    space = load_space(write(tmp_path, doc))
    dists = space.distributions()
    cfg = space.config({"batch_size": 64, "arch_args.widths": dists["arch_args.widths"].choices[1]})
    assert cfg.batch_size == 64 and cfg.arch_args["widths"] == [32, 32, 32]


def test_yaml_is_parsed_safely(tmp_path):
    from bnnsearch.errors import UserError

    marker = tmp_path / "executed"
    p = write(tmp_path, f"method: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_space(p)
    assert not marker.exists()


def test_relative_data_root_is_resolved_where_the_command_runs(tmp_path, monkeypatch):
    """Ray Tune runs every trial in a working directory of its own: a relative data_root must
    name the folder the user meant (the one the command runs in), resolved in the driver."""
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "s.yaml"
    base = {"method": "filtered", "fixed": {"data": "digits"}, "params": {"alpha": {"float": [1e-4, 1e-1], "log": True}}}
    p.write_text(yaml.safe_dump(base))
    assert load_space(p).config({"alpha": 1e-3}).data_root == str(tmp_path / "data")  # the default ./data
    p.write_text(yaml.safe_dump({**base, "fixed": {"data": "digits", "data_root": "sub/d"}}))
    assert load_space(p).fixed["data_root"] == str(tmp_path / "sub" / "d")
    p.write_text(yaml.safe_dump({**base, "params": {**base["params"],
                                                    "data_root": {"categorical": ["a", "/abs/b"]}}}))
    (choice,) = [q for q in load_space(p).params if q.name == "data_root"]
    assert choice.choices == (str(tmp_path / "a"), "/abs/b")


def test_ax_initial_design_is_max_of_5_and_twice_the_most_parameters_a_trial_samples():
    """``--startup-trials ax``: Ax's default, max(5, 2·d) random trials (methods.md §7.2), with d
    counted as compare counts hyperparameters (a conditional space: the most one trial samples)."""
    # fig8_latent: lr, weight_decay, init_scale, momentum, scaling -> 10; fig8_filtered: alpha, gamma -> 5 (not 4)
    assert load_space(ROOT / "fig8_latent.yaml").ax_startup_trials() == 10
    assert load_space(ROOT / "fig8_filtered.yaml").ax_startup_trials() == 5
    # proxconnect: pair, lr and four mu parameters for bnn++/pc (2 to 6 sampled) -> 12, not 2 x 8
    px = load_space(ROOT / "proxconnect.yaml")
    assert px.active_range()[1] == 6 and len(px.params) > 6 and px.ax_startup_trials() == 12


def test_a_pair_of_values_that_fails_together_is_rejected_at_load(tmp_path):
    """Each value alone is valid, so the one-at-a-time check passes; scaling with init_scale 0
    (a net that never trains, LatentHparams rejects it) must be caught before launch, naming the
    pair, and the same space with scaling searched only where init_scale is non-zero loads."""
    lat = {"method": "latent", "fixed": {"data": "digits", "epochs": 2},
           "params": {"init_scale": {"categorical": [1.0, 0.0]}, "scaling": {"categorical": [False, True]}}}
    with pytest.raises(ConfigError) as e:
        load_space(write(tmp_path, lat))
    msg = str(e.value)
    assert "space.yaml: params.scaling: init_scale = 0.0 together with scaling = True is invalid" in msg, msg
    assert "when:" in msg
    lat["params"]["scaling"]["when"] = {"init_scale": [1.0]}
    space = load_space(write(tmp_path, lat))
    assert [p.name for p in space.active_params({"init_scale": 0.0})] == ["init_scale"]
    # the order of declaration does not hide it (the pair is checked whichever comes first)
    flipped = ("method: latent\nfixed: {data: digits, epochs: 2}\nparams:\n"
               "  scaling: {categorical: [false, true]}\n  init_scale: {categorical: [1.0, 0.0]}\n")
    with pytest.raises(ConfigError, match="params.init_scale: scaling = True together with init_scale = 0.0"):
        load_space(write(tmp_path, flipped))


def test_integer_ranges_are_checked_at_every_value(tmp_path):
    """A group size that divides the width at both bounds of its range but not inside it, alone
    and paired with a searched width, is found at load (not when a trial samples it)."""
    doc = {"method": "local_binary", "fixed": {"arch": "local_mlp", "arch_args": {"widths": [64]}, "data": "digits"},
           "params": {"group_size": {"int": [1, 8]}}}
    with pytest.raises(ConfigError, match="params.group_size: value 3 is invalid: .*does not divide 64"):
        load_space(write(tmp_path, doc))
    doc = {**doc, "fixed": {"arch": "local_mlp", "data": "digits"},
           "params": {"arch_args.widths": {"categorical": [[60], [64]]}, "group_size": {"int": [1, 4]}}}
    with pytest.raises(ConfigError, match=r"params.group_size: arch_args.widths = \[64\] together with group_size = 3"):
        load_space(write(tmp_path, doc))
    doc["params"]["group_size"] = {"categorical": [1, 2, 4]}
    assert load_space(write(tmp_path, doc)).default_point() is None  # the default 105 is not a choice


@pytest.mark.parametrize("path", [ROOT / "latent.yaml", ROOT / "automl.yaml"], ids=["latent", "automl"])
def test_a_space_key_follows_what_the_file_compiles_to_not_its_text(tmp_path, path):
    doc = yaml.safe_load(path.read_text())
    key = load_space(path).key()
    same = tmp_path / "same.yaml"  # reworded: a comment, the keys in another order
    same.write_text("# reworded\n" + yaml.safe_dump(dict(reversed(list(doc.items()))), sort_keys=False))
    assert load_space(same).key() == key
    named = load_space(write(tmp_path, yaml.safe_dump({**doc, "name": "mine"}, sort_keys=False)))
    assert named.key() == key  # a label: it names the studies, it does not change a trial
    doc["fixed"]["epochs"] += 1
    assert load_space(write(tmp_path, yaml.safe_dump(doc, sort_keys=False))).key() != key


@pytest.mark.parametrize("path", [ROOT / "latent.yaml", ROOT / "automl.yaml"], ids=["latent", "automl"])
def test_a_space_name_labels_its_studies_and_its_compare_arm(tmp_path, path):
    from bnnsearch.sweep import SweepArgs

    doc = yaml.safe_load(path.read_text())
    plain = load_space(path)
    assert plain.name == "" and plain.arm == plain.method
    assert SweepArgs(space=plain, sampler="tpe", seed=3).study_name() == f"{plain.method}-tpe-s3"
    named = load_space(write(tmp_path, yaml.safe_dump({**doc, "name": "v2.small_lr+"}, sort_keys=False)))
    assert named.arm == "v2.small_lr+" and named.method == plain.method
    assert SweepArgs(space=named, sampler="tpe", seed=3).study_name() == "v2.small_lr+-tpe-s3"
    for bad in ("", None, "x" * 65, "-x", "a b", "a@b", "a/b", 3):
        with pytest.raises(ConfigError, match="name: name must be up to 64 letters"):
            load_space(write(tmp_path, yaml.safe_dump({**doc, "name": bad}, sort_keys=False)))


def test_a_recorded_study_is_told_apart_by_the_flags_that_define_it(tmp_path):
    """sweep.recorded_differences: the flags a study's parent run was recorded with (MLflow keeps
    them as strings) against this command's; how fast it runs (concurrency, CPUs) is not compared;
    a study recorded before the space key was kept is checked on its flags alone."""
    from dataclasses import replace
    from types import SimpleNamespace

    from bnnsearch.sweep import SPACE_KEY, SweepArgs, recorded_differences

    space = load_space(ROOT / "latent.yaml")
    params = {"trials": "20", "sampler": "tpe", "seed": "0", "startup_trials": "5", "pack": "1", "time_budget_s": "90.0"}
    parent = SimpleNamespace(data=SimpleNamespace(params=params, tags={"scheduler": "fifo", SPACE_KEY: space.key()}))
    a = SweepArgs(space=space, trials=20, time_budget_s=90.0)
    assert recorded_differences(parent, a) == []
    assert recorded_differences(parent, replace(a, concurrency=1, cpus_per_trial=2.0, max_failures=3)) == []
    assert recorded_differences(parent, replace(a, pack=8, scheduler="asha", time_budget_s=120.0, seed=1)) == [
        "--seed 0 (now 1)", "--pack 1 (now 8)", "--scheduler fifo (now asha)", "--time-budget 90s (now 120s)"]
    other = load_space(write(tmp_path, {**yaml.safe_load((ROOT / "latent.yaml").read_text()), "pack": 8}))
    assert recorded_differences(parent, replace(a, space=other, pack=1)) == [
        f"a different space ({other.path} compiles to another: a range, a fixed value or an objective changed)"]
    assert recorded_differences(parent, replace(a, warm_start="exp")) == ["--warm-start none (now exp)"]
    warm = SimpleNamespace(data=SimpleNamespace(params={**params, "warm_start": "exp"}, tags=parent.data.tags))
    assert recorded_differences(warm, replace(a, warm_start="exp")) == []
    old = SimpleNamespace(data=SimpleNamespace(params={k: v for k, v in params.items() if k != "time_budget_s"}, tags={}))
    assert recorded_differences(old, replace(a, space=other, pack=1, time_budget_s=0.0, warm_start="x")) == []
    assert recorded_differences(old, replace(a, time_budget_s=60.0)) == ["--time-budget 0s (now 60s)"]


def test_a_searched_key_is_not_fixed_too_unless_it_is_conditional(tmp_path):
    """A key every trial samples and a fixed value for it: the file says two things (refused). A
    conditional one may keep a fixed value for the trials that do not sample it."""
    doc = {"method": "proxconnect", "fixed": {"data": "digits", "hparams": {"mu0": 2.0}},
           "params": {"pair": {"categorical": ["bnn", "pc"]}, "mu0": {"float": [0.5, 5.0], "when": {"pair": ["pc"]}}}}
    space = load_space(write(tmp_path, yaml.safe_dump(doc, sort_keys=False)))
    assert space.config({"pair": "bnn"}).hparams["mu0"] == 2.0 and space.config({"pair": "pc", "mu0": 3.0}).hparams["mu0"] == 3.0
    del doc["params"]["mu0"]["when"]
    with pytest.raises(ConfigError, match=r"params\.mu0: hparams\.mu0 is searched here and fixed too "
                                          r"\(fixed\.hparams\.mu0 = 2\.0\); keep one"):
        load_space(write(tmp_path, yaml.safe_dump(doc, sort_keys=False)))
