import json
import subprocess
import sys

import pytest
import yaml

from bnnsearch.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bnnsearch.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def cfg_file(tmp_path):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(dict(method="filtered", arch="mlp", data="digits", epochs=2, batch_size=64,
                                     device="cpu", data_root=str(tmp_path / "data"),
                                     arch_args={"widths": [32, 32, 32]}, hparams={"alpha": 1e-3})))
    return p


def test_ctrl_c_during_train_says_the_run_is_incomplete(cfg_file, tmp_path, capsys, monkeypatch):
    """A real SIGINT after epoch 1 of 2: exit 130, a message naming the folder as incomplete, the
    epoch that finished in metrics.jsonl and no cost.json (only complete runs have one)."""
    import os
    import signal
    import time

    import bnnsearch.cli as cli
    from bnnsearch import interrupts

    progress = cli._progress

    def sigint_after_epoch_1(total):
        show = progress(total)

        def patched(m):
            show(m)
            if m["epoch"] == 1:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
        return patched

    monkeypatch.setattr(cli, "_progress", sigint_after_epoch_1)
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "run"
    try:
        rc = main(["train", str(cfg_file), "--out", str(out)])
    finally:
        signal.signal(signal.SIGINT, before)
        interrupts._state.update(count=0, defer=False, in_tune=False)
    err = capsys.readouterr().err
    assert rc == 130 and f"interrupted: {out}/ holds config.yaml and the epochs finished so far" in err
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (out / "cost.json").exists()


def test_train_writes_resolved_config_and_metrics(cfg_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(cfg_file), "--out", str(out), "--set", "hparams.gamma=0.2", "--set", "seed=3"]) == 0
    printed = capsys.readouterr().out
    assert "epoch   2/2" in printed and "best val" in printed
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["hparams"]["gamma"] == 0.2 and resolved["seed"] == 3
    assert resolved["hparams"]["alpha_decay"] == "cosine"  # defaults filled in
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and "val/acc" in rows[0]
    # the resolved config re-runs as is and reproduces the metrics (same seed, CPU)
    out2 = tmp_path / "rerun"
    assert main(["train", str(out / "config.yaml"), "--out", str(out2)]) == 0
    rows2 = [json.loads(line) for line in (out2 / "metrics.jsonl").read_text().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("time/")}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in rows2]
    # a run's folder is not overwritten (nor a config trained in its own folder)
    before = (out / "metrics.jsonl").read_text()
    assert main(["train", str(out / "config.yaml"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (f"bnnsearch: error: --out {out}: already holds a run (config.yaml, "
                                               "metrics.jsonl, cost.json); give another --out, or remove it first")
    assert (out / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("override,needle", [
    ("bogus=1", "unknown key 'bogus'; allowed: "),
    ("epochs=ten", "epochs: expected an integer, got 'ten'"),
    ("method=nope", "unknown method 'nope'; known: "),
    ("arch=nope", "unknown arch 'nope'; known: "),
    ("data=nope", "unknown dataset 'nope'; known: "),
    ("hparams.alpha=-1", "hparams: alpha and gamma must lie in (0, 1]"),
    ("hparams.alpha_decay=sometimes", "hparams.alpha_decay: 'sometimes' is not allowed; choose one of 'none', 'cosine', 'linear'"),
    ("hparams.lr=0.1", "hparams.lr: unknown key 'lr'; allowed: "),
    ("device=tpu", "device: 'tpu' is not allowed"),
    ("arch_args.widths=[0]", "arch_args: widths must be"),
])
def test_bad_input_one_clear_line_exit_2(cfg_file, override, needle):
    r = run_cli("train", str(cfg_file), "--set", override)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert str(cfg_file) in lines[0] and f"(from --set {override})" in lines[0]  # the file may not hold the value


def test_missing_file_and_bad_yaml(tmp_path):
    r = run_cli("train", str(tmp_path / "none.yaml"))
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    r = run_cli("train", str(bad))
    assert r.returncode == 2 and "not valid YAML" in r.stderr and "Traceback" not in r.stderr



def test_an_output_folder_that_cannot_be_written_is_named_by_its_flag(cfg_file, tmp_path, capsys, monkeypatch):
    """A file where ``--out``'s folder should be, or beneath it, is refused before any training
    (train, compare) or study (automl); a folder whose first write still fails (as root the
    access check passes under /proc) is named by ``--out`` too, not blamed on the config file."""
    import bnnsearch.runio as runio

    root = __import__("pathlib").Path(__file__).resolve().parents[1] / "search_spaces"
    monkeypatch.chdir(tmp_path)  # the default store and runs/ would go here; nothing may be made
    afile = tmp_path / "afile"
    afile.write_text("")
    for argv, needle in [(["train", str(cfg_file), "--out", str(afile)], "is a file, not a directory"),
                         (["train", str(cfg_file), "--out", str(afile / "run")], f"cannot create the directory ({afile} is a file)"),
                         (["compare", str(root / "latent.yaml"), "--repeats", "1", "--trials", "1",
                           "--out", str(afile)], "is a file, not a directory"),
                         (["automl", str(root / "automl.yaml"), "--trials", "1", "--out", str(afile / "x")],
                          f"cannot create the directory ({afile} is a file)")]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"bnnsearch: error: --out {afile}") and needle in err[0], err

    def refused(out, cfg):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(runio, "write_config", refused)
    assert main(["train", str(cfg_file), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"bnnsearch: error: --out {tmp_path / 'run'}: cannot write there (Permission denied)"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "cfg.yaml", "data"]

def test_yaml_exponent_without_dot_is_a_float(cfg_file, tmp_path):
    from bnnsearch.config import load_config

    cfg_file.write_text(cfg_file.read_text().replace("alpha: 0.001", "alpha: 1e-3"))
    assert load_config(cfg_file).hparams["alpha"] == 1e-3


def test_cost_command(cfg_file, capsys):
    assert main(["cost", str(cfg_file)]) == 0
    out = capsys.readouterr().out
    assert "net.3" in out and "BOPs" in out and "OPs = BOPs/64 + FLOPs" in out


def test_space_command(capsys, tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "search_spaces"
    assert main(["space", str(root / "filtered.yaml"), str(root / "latent.yaml")]) == 0
    out = capsys.readouterr().out
    assert "hparams.alpha" in out and "float (log)" in out and "outside this space" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: filtered\nparams: {alpha: {float: [1.0, 0.1]}}\n")
    r = run_cli("space", str(bad))
    assert r.returncode == 2 and "params.alpha: low >= high" in r.stderr and "Traceback" not in r.stderr


def test_every_command_and_option_has_help_and_shows_its_default():
    import argparse

    from bnnsearch.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == {"train", "cost", "space", "sweep", "compare", "best", "dashboard", "demo", "automl",
                                "evaluate", "export"}
    for name, p in sub.choices.items():
        assert p.description, name
        text = p.format_help()
        for a in p._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            assert a.help, f"{name} {a.option_strings or a.dest}: no help"
            if a.option_strings and a.default is not None and a.default is not False:
                assert f"(default: {a.default})" in " ".join(text.split()), f"{name} {a.option_strings[0]}"
    # compare/demo have their own truths, not sweep's
    assert "bnnsearch-compare/<name>" in sub.choices["compare"].format_help()
    assert "demo-<date>-<time>" in sub.choices["demo"].format_help()


def test_resume_command_pins_the_name_and_adds_resume():
    from bnnsearch.cli import resume_command

    assert resume_command(["demo", "--trials", "4"], "demo-1") == "bnnsearch demo --trials 4 --name demo-1 --resume"
    assert (resume_command(["sweep", "a b.yaml", "--name", "x", "--resume"], "x")
            == "bnnsearch sweep 'a b.yaml' --name x --resume")


def test_markdown_table_escapes_pipes_and_aligns_numbers():
    from bnnsearch.textui import table

    md = table([["a|b", 1.5, 2]], ["name", "x", "n"], align_right={1, 2}, markdown=True).splitlines()
    assert md == ["| name | x | n |", "| --- | ---: | ---: |", "| a\\|b | 1.5 | 2 |"]


@pytest.mark.parametrize("code", [0, 2, 130])
def test_the_command_exits_with_mains_status_and_an_interrupt_skips_the_final_teardown(monkeypatch, code):
    """130 (an interrupt): the exit handlers run (Ray's shutdown among them), then os._exit, so
    the interpreter's own teardown, where Ray's native code crashed after a Ctrl-C during set-up,
    never runs. Any other status: a plain sys.exit."""
    import atexit
    import os

    import signal

    from bnnsearch import cli, interrupts

    calls = []

    class Exited(BaseException):
        pass

    def hard_exit(status):
        calls.append(("os._exit", status))
        raise Exited

    monkeypatch.setattr(cli, "main", lambda: code)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: calls.append(("exit handlers",)))
    monkeypatch.setattr(os, "_exit", hard_exit)
    before = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises((Exited, SystemExit)) as e:
            cli.entry()
        assert signal.getsignal(signal.SIGINT) is interrupts.teardown_handler  # for the atexit teardown
    finally:
        signal.signal(signal.SIGINT, before)  # the entry point ends the process; this test's does not
    if code == 130:
        assert calls == [("exit handlers",), ("os._exit", 130)]
    else:
        assert calls == [] and e.value.code == code
