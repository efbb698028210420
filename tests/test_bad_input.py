"""A careless user's mistakes, table-driven: each gets one clear line naming the file and key or
the flag, exit code 2, no traceback, before any work starts (no Ray, no training), and nothing
half-written (no study run, no results folder, no run directory, no empty tracking store). Add a
row for every new case: the count can only go up. (The config-key cases of `train --set` are in
test_cli.py.)"""
import json

import pytest
import yaml

from bnnsearch.cli import main

SPACE = {"method": "filtered", "objective": {"metric": "val/acc", "mode": "max"},
         "fixed": {"arch": "mlp", "arch_args": {"widths": [16, 16]}, "data": "digits", "epochs": 1, "batch_size": 64,
                   "device": "cpu"},
         "params": {"alpha": {"float": [1e-4, 1e-1], "log": True}}}
CONFIG = {"method": "filtered", "arch": "mlp", "data": "digits", "epochs": 1, "device": "cpu",
          "arch_args": {"widths": [16, 16]}}


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    w = lambda name, obj: (tmp_path / name).write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))  # noqa: E731
    w("space.yaml", {**SPACE, "fixed": {**SPACE["fixed"], "data_root": str(tmp_path / "data")}})
    w("mnist5k.yaml", {**SPACE, "method": "latent", "params": {"lr": {"float": [1e-3, 1.0], "log": True}},
                       "fixed": {**SPACE["fixed"], "data": "mnist5k"}})
    w("nodata.yaml", {**SPACE, "fixed": {**SPACE["fixed"], "data": "mnist", "data_root": str(tmp_path / "nowhere")}})
    w("config.yaml", {**CONFIG, "data_root": str(tmp_path / "data")})
    w("nodata_config.yaml", {**CONFIG, "data": "mnist", "data_root": str(tmp_path / "nowhere")})
    w("pack0.yaml", {**SPACE, "pack": 0})
    w("space2.yaml", {**SPACE, "fixed": {**SPACE["fixed"], "data_root": str(tmp_path / "data")},
                      "params": {"gamma": {"float": [1e-3, 1.0], "log": True}}})  # a second filtered space
    w("named.yaml", {**SPACE, "name": "filtered-gamma", "fixed": {**SPACE["fixed"], "data_root": str(tmp_path / "data")},
                     "params": {"gamma": {"float": [1e-3, 1.0], "log": True}}})
    w("slash.yaml", {**SPACE, "name": "a/b"})
    w("empty.yaml", "")
    w("epochs.yaml", {**CONFIG, "epochs": -3})
    w("batch.yaml", {**CONFIG, "batch_size": 0})
    w("key.yaml", {**CONFIG, "bogus": 1})
    w("hpkey.yaml", {**CONFIG, "hparams": {"alpha": "fast"}})
    dead = {"method": "latent", "hparams": {"init_scale": 0.0, "scaling": True}}
    w("dead.yaml", {**CONFIG, **dead})
    w("dead_space.yaml", {**SPACE, "method": "latent", "fixed": {**SPACE["fixed"], "hparams": {"init_scale": 0.0}},
                          "params": {"scaling": {"categorical": [False, True]}}})
    w("syntax.yaml", "method: filtered\nepochs: [3\nseed: 1\n")
    (tmp_path / "latin1.yaml").write_bytes("method: filtered  # caf\xe9\n".encode("latin-1"))
    w("group.yaml", {"method": "local_binary", "fixed": {"arch": "local_mlp", "arch_args": {"widths": [30, 30]},
                                                         "data": "digits"},
                     "params": {"group_size": {"categorical": [5, 7]}}})
    am = {"objectives": [{"metric": "val/acc", "mode": "max"}, {"metric": "cost/mem_bits", "mode": "min"}],
          "constraints": {"cost/mem_bits": {"max": 1.0e6}},
          "fixed": {"data": "digits", "epochs": 1, "device": "cpu", "data_root": str(tmp_path / "data")},
          "methods": {"latent": {"params": {"lr": {"float": [0.1, 10.0]}}},
                      "local_binary": {"fixed": {"arch": "local_mlp", "arch_args": {"widths": [16, 16]},
                                                 "hparams": {"group_size": 8}},
                                       "params": {"robustness": {"float": [0.0, 1.0]}}}}}
    w("am.yaml", am)
    for folder, name, doc in (("cmpout", "summary.json", {"name": "another"}), ("amout", "pareto.json", {"study": "another"})):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_text(json.dumps(doc))
    w("am_name.yaml", {**am, "name": "am@tpe"})  # '@' separates a compare arm from its sampler
    w("am_metric.yaml", {**am, "objectives": [{"metric": "val/acc"}, {"metric": "cost/bytes", "mode": "min"}]})
    w("am_ref.yaml", {**am, "objectives": [{"metric": "val/acc"}, {"metric": "time/total_s", "mode": "min"}]})
    w("am_limit.yaml", {**am, "constraints": {"cost/mem_bits": {"below": 3}}})
    w("am_method.yaml", {**am, "methods": {**am["methods"], "sgd": {}}})
    w("am_shared.yaml", {**am, "params": {"lr": {"float": [0.1, 1.0]}}})
    w("am_group.yaml", {**am, "methods": {"local_binary": {"fixed": {"arch": "local_mlp", "arch_args": {"widths": [16, 16]}},
                                                           "params": {"group_size": {"categorical": [8, 5]}}}}})
    w("am_key.yaml", {**am, "method": "latent"})
    lb_fixed = {k: v for k, v in am["methods"]["local_binary"]["fixed"].items() if k != "arch_args"}
    w("am_width.yaml", {**am, "params": {"arch_args.widths": {"categorical": [[16, 16], [12, 12]]}},  # 8 does not divide 12
                        "methods": {**am["methods"], "local_binary": {**am["methods"]["local_binary"], "fixed": lb_fixed}}})
    w("am_twice.yaml", {**am, "params": {"arch_args.widths": {"categorical": [[16, 16], [32, 32]]}}})  # and fixed [16, 16]
    w("twice.yaml", {**SPACE, "fixed": {**SPACE["fixed"], "hparams": {"alpha": 0.01}}})
    w("am_pair.yaml", {**am, "params": {"arch_args.widths": {"categorical": [[16, 16], [12, 12]]}},
                       "methods": {"latent": am["methods"]["latent"],
                                   "local_binary": {"fixed": {"arch": "local_mlp"},
                                                    "params": {"group_size": {"categorical": [4, 8]}}}}})
    w("pair.yaml", {"method": "latent", "fixed": {"data": "digits"},
                    "params": {"init_scale": {"categorical": [1.0, 0.0]}, "scaling": {"categorical": [False, True]}}})
    w("onewidth.yaml", {**CONFIG, "arch_args": {"widths": [16]}})  # first and last FP: nothing binary
    w("onewidth_space.yaml", {**SPACE, "fixed": {k: v for k, v in SPACE["fixed"].items() if k != "arch_args"},
                              "params": {**SPACE["params"], "arch_args.widths": {"categorical": [[16], [16, 16]]}}})
    w("hp_top.yaml", {**CONFIG, "alpha": 1e-3})
    w("hp_fixed.yaml", {**SPACE, "fixed": {**SPACE["fixed"], "gamma": 0.1}})
    w("notadb", "just text\n")
    w("afile", "x")
    (tmp_path / "adir").mkdir()
    return tmp_path


SWEEP = ["sweep", "space.yaml", "--trials", "1"]
CASES = [  # (argv, what the one line must say)
    (["train", "latin1.yaml"], "latin1.yaml: not a UTF-8 text file"),
    (["train", "adir"], "adir: is a directory, not a YAML file"),
    (["train", "empty.yaml"], "empty.yaml: the file is empty"),
    (["train", "epochs.yaml"], "epochs.yaml: epochs: must be >= 1, got -3"),
    (["train", "batch.yaml"], "batch.yaml: batch_size: must be >= 1, got 0"),
    (["train", "key.yaml"], "key.yaml: bogus: unknown key 'bogus'"),  # the file, then the key
    (["train", "onewidth.yaml"], "onewidth.yaml: arch_args: widths [16] make 2 linear layers, and with the first and "
                                 "last kept in full precision none is binary"),
    (["train", "hp_top.yaml"], "hp_top.yaml: alpha: 'alpha' is a hyperparameter of method filtered: put it under hparams"),
    (["train", "config.yaml", "--set", "gamma=0.5"],
     "config.yaml (from --set gamma=0.5): gamma: 'gamma' is a hyperparameter of method filtered"),
    (["train", "config.yaml", "--set", "amp=bf16", "--set", "dtype=float64"],
     "config.yaml (from --set amp=bf16): amp: bf16 computes in bfloat16, dtype: float64 asks for exact float64 (pick one)"),
    (["sweep", "hp_fixed.yaml"], "hp_fixed.yaml: fixed.gamma: 'gamma' is a hyperparameter of method filtered"),
    (["cost", "onewidth.yaml"], "onewidth.yaml: arch_args: widths [16] make 2 linear layers"),
    # the first choice fails with every alpha: the widths are named, not alpha
    (["sweep", "onewidth_space.yaml"], "onewidth_space.yaml: params.arch_args.widths: value [16] is invalid"),
    (["train", "hpkey.yaml"], "hpkey.yaml: hparams.alpha: expected a number, got 'fast'"),
    (["train", "dead.yaml"], "dead.yaml: hparams: scaling with init_scale 0"),  # a net that never trains
    (["space", "dead_space.yaml"], "dead_space.yaml: params.scaling: value True is invalid: config.hparams: scaling with init_scale 0"),
    (["train", "syntax.yaml"], "syntax.yaml: not valid YAML at line 3, column 5"),
    (["train", "nodata_config.yaml"], "nodata_config.yaml: data mnist: files not found"),
    (["space", "group.yaml"], "group.yaml: params.group_size: value 7 is invalid"),
    ([*SWEEP, "--concurrency", "-1"], "--concurrency -1: must be >= 0"),
    ([*SWEEP, "--max-failures", "-2"], "--max-failures -2: must be >= 0, or -1"),
    ([*SWEEP, "--checkpoint-s", "-1"], "--checkpoint-s -1: must be >= 0"),
    ([*SWEEP, "--pack", "-2"], "--pack -2: must be >= 1 (configurations trained together as one network; 0: the space file's pack:)"),
    (["sweep", "pack0.yaml"], "pack0.yaml: pack: pack must be an integer >= 1"),
    (["compare", "space.yaml", "space2.yaml"], "two spaces are both arm 'filtered' (space.yaml, space2.yaml): give "
                                                "each a distinct name: in its file"),
    (["compare", "named.yaml", "space.yaml", "named.yaml"], "two spaces are both arm 'filtered-gamma' (named.yaml, "
                                                            "named.yaml)"),
    (["automl", "am_name.yaml"], "am_name.yaml: name: name must be up to 64 letters"),
    (["sweep", "slash.yaml"], "slash.yaml: name: name must be up to 64 letters, digits"),
    (["compare", "space.yaml", "--out", "cmpout"], "--out cmpout: holds the outputs of comparison 'another' "
                                                   "(summary.json); give another --out"),
    (["automl", "am.yaml", "--out", "amout"], "--out amout: holds the outputs of study 'another' (pareto.json)"),
    ([*SWEEP, "--trials", "0"], "--trials 0: must be >= 1"),
    ([*SWEEP, "--cpus-per-trial", "0"], "--cpus-per-trial 0: must be > 0"),
    ([*SWEEP, "--storage", "afile"], "--storage afile: is a file"),
    ([*SWEEP, "--tracking-uri", "mlruns"], "--tracking-uri mlruns: a plain path is MLflow's file store"),
    ([*SWEEP, "--storage", "afile/runs"], "--storage afile/runs: cannot create the directory ("),
    ([*SWEEP, "--storage", "afile/runs/x"], "afile is a file)"),
    ([*SWEEP, "--gpus-per-trial", "1"], "--gpus-per-trial 1: this machine has 0 GPUs in all"),
    ([*SWEEP, "--address", "127.0.0.1:1"], "--address 127.0.0.1:1: no Ray head answers there"),
    ([*SWEEP, "--address", "nonsense"], "--address nonsense: expected HOST:PORT"),
    ([*SWEEP, "--tracking-uri", "http://127.0.0.1:1"], "--tracking-uri http://127.0.0.1:1: no MLflow server answers"),
    ([*SWEEP, "--tracking-uri", "sqlite:///notadb"], "notadb is not an SQLite database"),
    ([*SWEEP, "--tracking-uri", "sqlite:///adir"], "adir is a directory, not an SQLite database"),
    ([*SWEEP, "--tracking-uri", "sqlite:///no/such/dir/m.db"], "folder no/such/dir does not exist"),
    (["sweep", "nodata.yaml"], "nodata.yaml: data mnist: files not found"),
    (["compare", "space.yaml", "mnist5k.yaml"], "the spaces train on different data"),
    (["compare", "space.yaml", "mnist5k.yaml", "--target-delta", "-1"], "--target-delta -1: must be >= 0"),
    (["compare", "space.yaml", "mnist5k.yaml", "--repeats", "0"], "--repeats 0: must be >= 1"),
    (["compare", "space.yaml", "mnist5k.yaml", "--noise-seeds", "1"], "--noise-seeds 1: 0 (off) or >= 2"),
    (["compare", "space.yaml", "mnist5k.yaml", "--target-gap", "0"], "--target-gap 0: must lie in (0, 1]"),
    (["automl", "space.yaml"], "space.yaml: a one-method space (method: filtered)"),
    (["automl", "am_metric.yaml"], "am_metric.yaml: objectives[1].metric: unknown metric 'cost/bytes'"),
    (["automl", "am_ref.yaml"], "am_ref.yaml: objectives[1]: the hypervolume needs a reference value for time/total_s"),
    (["automl", "am_limit.yaml"], "am_limit.yaml: constraints.cost/mem_bits: a limit is {max: value}"),
    (["automl", "am_method.yaml"], "am_method.yaml: methods.sgd"),
    (["automl", "am_shared.yaml"], "am_shared.yaml: params.lr: a shared parameter is a run-config key"),
    (["automl", "am_group.yaml"], "am_group.yaml: methods.local_binary.params.group_size: value 5 is invalid"),
    (["automl", "am_key.yaml"], "am_key.yaml: method: unknown key 'method'"),
    (["automl", "am_width.yaml"], "am_width.yaml: params.arch_args.widths: value [12, 12] is invalid for method local_binary"),
    (["automl", "am_twice.yaml"], "am_twice.yaml: params.arch_args.widths: arch_args.widths is searched here and fixed too "
                                  "(methods.local_binary.fixed.arch_args.widths = [16, 16]); keep one"),
    (["sweep", "twice.yaml"], "twice.yaml: params.alpha: hparams.alpha is searched here and fixed too "
                              "(fixed.hparams.alpha = 0.01); keep one"),
    (["train", "space.yaml"], "space.yaml: a search space (params:), not the config of one run; study it with  "
                              "bnnsearch sweep space.yaml"),
    (["cost", "am.yaml"], "am.yaml: an AutoML space (methods:), not the config of one run; study it with  "
                          "bnnsearch automl am.yaml"),
    (["automl", "am_pair.yaml"], "am_pair.yaml: methods.local_binary.params.group_size: arch_args.widths = [12, 12] "
                                 "together with local_binary:group_size = 8 is invalid"),
    (["space", "pair.yaml"], "pair.yaml: params.scaling: init_scale = 0.0 together with scaling = True is invalid"),
    ([*SWEEP, "--sampler", "bandit"], "--sampler bandit chooses among methods: it needs an AutoML space"),
    ([*SWEEP, "--sampler", "tpe-cover"], "--sampler tpe-cover chooses among methods: it needs an AutoML space"),
    (["sweep", "am.yaml"], "am.yaml: an AutoML space (methods:); run it with  bnnsearch automl am.yaml"),
    (["automl", "am.yaml", "--scheduler", "asha"], "--scheduler asha: early stopping judges one objective"),
    (["automl", "am.yaml", "--pick", "0"], "--pick 0: a rank on the front"),
    (["automl", "am.yaml", "--out", "config.yaml"], "--out config.yaml: is a file, not a directory"),
    (["automl", "am.yaml", "--trials", "0"], "--trials 0: must be >= 1 (0 only with a time budget)"),
    (["evaluate", "models:/x/1", "--tracking-uri", "sqlite:///typo.db"], "typo.db does not exist"),
    (["evaluate", "missing.bnn"], "missing.bnn: no such file"),
    (["export", "models:/x/1", "--out", "adir"], "--out adir: is a directory"),
    (["export", "models:/x/1", "--out", "afile/net.bnn"], "--out afile/net.bnn: cannot create the directory (afile is a file)"),
    (["export", "models:/x/1", "--out", "new/net.bnn", "--tracking-uri", "sqlite:///typo.db"], "typo.db does not exist"),
    (["best", "x", "--out", "afile/best.yaml"], "--out afile/best.yaml: cannot create the directory (afile is a file)"),
    (["compare", "am.yaml", "--samplers", "tpe,nope"], "--samplers tpe,nope: 'nope' is not a sampler"),
    (["compare", "am.yaml", "space.yaml"], "compare judges every space by the same objectives, references and limits; "
     "these differ: am.yaml: max val/acc, min cost/mem_bits; references 0, 1e+06; limits cost/mem_bits max 1e+06 | "
     "space.yaml: max val/acc"),
    (["compare", "space.yaml", "--packs", "1,x"], "--packs 1,x: give distinct pack sizes >= 1"),
    (["compare", "space.yaml", "--packs", "8,8"], "--packs 8,8: give distinct pack sizes >= 1"),
    (["compare", "space.yaml", "--packs", "0,8"], "--packs 0,8: give distinct pack sizes >= 1"),
    (["compare", "space.yaml", "--packs", "1,8", "--samplers", "tpe,random"], "--packs and --samplers: give one"),
    (["compare", "am.yaml", "--noise-seeds", "2"], "--noise-seeds 2: a noise floor of a hypervolume is not defined"),
    (["automl", "am.yaml", "--warm-start", "nope", "--tracking-uri", "sqlite:///typo.db"], "typo.db"),
    (["best", "x", "--top", "0"], "--top 0: must be >= 1"),
    (["best", "x", "--tracking-uri", "http://127.0.0.1:1"], "no MLflow server answers there"),
    (["best", "x", "--tracking-uri", "sqlite:///typo.db"], "typo.db does not exist (nothing recorded there"),
    (["best", "x"], "mlflow.db does not exist"),
    (["dashboard", "--export", "d.html", "--tracking-uri", "http://127.0.0.1:1"], "no MLflow server answers there"),
    (["dashboard", "--export", "d.html", "--tracking-uri", "sqlite:///typo.db"], "typo.db does not exist"),
    (["dashboard", "--export", "adir"], "--export adir: is a directory"),
    (["dashboard", "--export", "afile/d.html"], "--export afile/d.html: cannot create the directory (afile is a file)"),
    (["dashboard", "--export", "new/d.html", "--tracking-uri", "sqlite:///typo.db"], "typo.db does not exist"),
    (["dashboard", "--port", "99999"], "--port 99999: must be a TCP port"),
    (["dashboard", "--tracking-uri", "sqlite:///typo.db"], "typo.db does not exist"),
    (["dashboard", "--tracking-uri", "http://127.0.0.1:1"], "no MLflow server answers there"),
    (["compare", "space.yaml", "--status"], "mlflow.db does not exist (nothing recorded there"),
    # a study's flags, checked for every arm before the comparison prints or creates anything
    (["compare", "space.yaml", "--trials", "-1"], "--trials -1: must be >= 1 (0 only with a time budget)"),
    (["compare", "space.yaml", "--startup-trials", "-2"], "--startup-trials -2: must be >= 0"),
    (["compare", "space.yaml", "--seed", "-1"], "--seed -1: must be >= 0"),
    (["compare", "space.yaml", "--samplers", "tpe,bandit"], "--sampler bandit chooses among methods"),
    (["compare", "space.yaml", "--status", "--cpus-per-trial", "0"], "--cpus-per-trial 0: must be > 0"),
    ([*SWEEP, "--seed", "-1"], "--seed -1: must be >= 0"),
    ([*SWEEP, "--cpus-per-trial", "100000"], "--cpus-per-trial 100000: this machine has"),  # before the header
    ([*SWEEP, "--name", "../up"], "--name '../up': a study's name is also its folder under --storage"),
    (["compare", "space.yaml", "--name", "a/b"], "--name 'a/b': a study's name is also its folder under --storage"),
    (["automl", "am.yaml", "--name", ".."], "--name '..': a study's name is also its folder under --storage"),
    (["compare", "space.yaml", "--cpus-per-trial", "100000"], "--cpus-per-trial 100000: this machine has"),
    (["automl", "am.yaml", "--cpus-per-trial", "100000"], "--cpus-per-trial 100000: this machine has"),
]


class WorkStarted(BaseException):
    """Raised by the guarded entry points: work began before the mistake was reported (a
    BaseException, so no ``except Exception`` in the code under test can turn it into an error line)."""


@pytest.fixture
def no_work(monkeypatch):
    """Ray and training refuse to start: a mistake must be reported before Ray starts or a training
    loop is set up (a user should not wait for a cluster or an epoch to hear about a typo; loading
    the data and the driver's trial build of a space, which find mistakes, come before).
    Deterministic, unlike a time bound."""
    import ray

    from bnnsearch import engine

    def refuse(what):
        def start(*args, **kwargs):
            raise WorkStarted(f"{what} was called before the mistake was reported")
        return start

    monkeypatch.setattr(ray, "init", refuse("ray.init"))
    monkeypatch.setattr(engine, "Pack", refuse("training (engine.Pack)"))


@pytest.mark.parametrize("argv,needle", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_mistake_is_one_clear_line_and_nothing_is_written(files, no_work, capsys, argv, needle):
    before = sorted(p.name for p in files.iterdir())
    assert main(argv) == 2
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnnsearch: error: ") and needle in err[0], err
    assert out == "", out  # no header or progress line before the error
    # nothing half-written: no tracking store, no Ray results, no run directory, no output file
    assert sorted(p.name for p in files.iterdir()) == before


@pytest.mark.parametrize("flag", [["--pick", "0"], ["--out", "config.yaml"]])
def test_automl_refuses_a_bad_flag_before_its_header(files, no_work, capsys, flag):
    assert main(["automl", "am.yaml", *flag]) == 2
    assert capsys.readouterr().out == ""  # the study's header used to come first


def test_best_names_a_missing_experiment(files, capsys):
    from bnnsearch.tracking import Tracker

    Tracker(f"sqlite:///{files}/mlflow.db", "bnnsearch/digits/mlp")
    assert main(["best", "x", "--experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--experiment 'nope': no such experiment" in err and "bnnsearch/digits/mlp" in err


def test_compare_status_names_a_comparison_that_is_not_in_the_store(files, capsys):
    from bnnsearch.tracking import Tracker

    Tracker(f"sqlite:///{files}/mlflow.db", "bnnsearch/digits/mlp")
    before = sorted(p.name for p in files.iterdir())
    assert main(["compare", "space.yaml", "--status", "--name", "mine"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bnnsearch: error: --status: no comparison 'mine' in sqlite:///{files}/mlflow.db (no experiment "
                   "'bnnsearch-compare/mine'); give the same spaces and flags as the command that runs it"]
    assert sorted(p.name for p in files.iterdir()) == before  # no results folder


def test_outputs_go_into_new_folders(files, capsys):
    from bnnsearch.tracking import Tracker

    Tracker(f"sqlite:///{files}/mlflow.db", "bnnsearch/digits/mlp")
    assert main(["dashboard", "--export", "new/folder/d.html"]) == 0
    assert (files / "new" / "folder" / "d.html").stat().st_size > 1000


def test_an_output_file_whose_write_fails_is_named_by_its_flag(files, capsys, monkeypatch):
    """A write that fails although the checks passed (as root under /proc; a full disk) is one
    line naming the flag, and leaves neither the file nor its temporary."""
    from bnnsearch import runio
    from bnnsearch.tracking import Tracker

    Tracker(f"sqlite:///{files}/mlflow.db", "bnnsearch/digits/mlp")
    before = sorted(p.name for p in files.iterdir())

    def full(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    real = runio.write_whole
    monkeypatch.setattr(runio, "write_whole", lambda path, write, unique=False: real(path, full))
    assert main(["dashboard", "--export", "d.html"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bnnsearch: error: --export d.html: cannot write there (No space left on device)"], err
    assert sorted(p.name for p in files.iterdir()) == before


def test_a_train_that_cannot_start_leaves_no_run_directory(files, capsys):
    assert main(["train", "nodata_config.yaml", "--out", "run1"]) == 2
    assert not (files / "run1").exists()


def test_evaluate_names_a_missing_model(files, capsys):
    from bnnsearch.tracking import Tracker

    Tracker(f"sqlite:///{files}/mlflow.db", "bnnsearch/digits/automl")
    assert main(["evaluate", "models:/nope/1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models:/nope/1: cannot load an MLflow PyTorch model" in err[0], err


@pytest.mark.parametrize("argv", [["automl", "am.yaml", "--trials", "0"], [*SWEEP, "--trials", "0"]],
                         ids=["automl", "sweep"])
def test_a_bad_budget_is_refused_before_the_header(files, capsys, argv):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "--trials 0: must be >= 1" in err and out == "", out  # no "study ...: , sampler tpe" header first


def test_an_address_that_answers_but_is_no_ray_head_is_one_clear_error(files, capsys, monkeypatch):
    """A port that accepts connections but is not a Ray head (seen: a proxy on 10.0.0.1:6379)
    passes the socket check; ray.init then fails after about 30 s of retries. Ray's connection
    failure is reproduced here (its real retries take minutes on a silent listener); the rest is
    the real path, and nothing is recorded."""
    import ray

    import bnnsearch.sweep as sweep

    def refuse(*a, **k):
        raise ConnectionError("Failed to connect to Ray cluster at 10.9.9.9:6379")

    monkeypatch.setattr(sweep, "_check_address", lambda address: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)
    assert main([*SWEEP, "--address", "10.9.9.9:6379"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--address 10.9.9.9:6379: no Ray cluster answers there (Failed to connect" in err[0], err
    from mlflow.tracking import MlflowClient

    runs = [r for e in MlflowClient(f"sqlite:///{files}/mlflow.db").search_experiments()
            for r in MlflowClient(f"sqlite:///{files}/mlflow.db").search_runs([e.experiment_id])]
    assert runs == []  # no study parent run


def test_a_study_running_in_another_process_is_not_started_twice(files, no_work, capsys):
    """The same study name given to two drivers at once: both used to pass the "already exists"
    check before either recorded anything, then shared one Ray results folder and one study in
    MLflow. While one driver holds the study (``_claim_study``, an flock the OS drops with the
    process), another is refused with one line, before Ray starts and with nothing written; a
    --resume is refused too. Another name is free."""
    from pathlib import Path

    from bnnsearch.sweep import _claim_study

    before = sorted(p.name for p in files.iterdir())
    with _claim_study(Path("bnnsearch_runs").resolve(), "filtered-tpe-s0"):
        for extra in ([], ["--resume"]):
            assert main([*SWEEP, *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "study 'filtered-tpe-s0' is running in another process" in err[0], err
        assert sorted(p.name for p in files.iterdir()) == before
        with _claim_study(Path("bnnsearch_runs").resolve(), "filtered-tpe-s1"):
            pass  # another study of the same storage
    with _claim_study(Path("bnnsearch_runs").resolve(), "filtered-tpe-s0"):
        pass  # released with the first
