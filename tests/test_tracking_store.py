"""The cluster tracking store, for real: PostgreSQL (Debian's package, `make postgres`) behind
`mlflow server`, one Ray cluster started with `ray start --head`, and three studies whose drivers
run at once against both. Every child run and every epoch's metrics must be there exactly once.

Throughput of the store itself: benchmarks/tracking_store.py (figures in README)."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from stores import free_port, mlflow_server, postgres, postgres_bin  # noqa: E402

pytestmark = pytest.mark.slow

EPOCHS, TRIALS = 3, 4
ARMS = {  # three methods, one experiment (same data and arch): they also race to create it
    "filtered": {"alpha": {"float": [1e-4, 1e-1], "log": True}, "gamma": {"float": [0.01, 1.0], "log": True}},
    "latent": {"lr": {"float": [1e-3, 1.0], "log": True}},
    "proxconnect": {"lr": {"float": [1e-3, 1.0], "log": True}},
}


@pytest.fixture
def pg():
    if postgres_bin() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed (CI=true): `make postgres` should have installed it")
        pytest.skip("PostgreSQL server binaries not installed (make postgres)")
    with postgres() as uri:
        yield uri


@pytest.fixture
def ray_head(tmp_path, monkeypatch):
    """A Ray cluster as a user starts one (`ray start --head`), with token authentication (what
    `ray start` turns on wherever ~/.ray/auth_token exists); drivers get the same token."""
    import secrets

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    ray = Path(sys.executable).parent / "ray"
    log = tmp_path / "ray-head.log"
    with log.open("w") as f:
        head = subprocess.Popen([str(ray), "start", "--head", "--block", "--num-cpus", "2", "--port", str(free_port()),
                                 "--include-dashboard", "false", "--disable-usage-stats"],
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.time()
        while True:
            assert head.poll() is None, "ray start --head exited:\n" + log.read_text()[-3000:]
            assert time.time() - t0 < 120, "the Ray head did not come up:\n" + log.read_text()[-3000:]
            found = re.search(r"ray start --address='([^']+)'", log.read_text())
            if found and subprocess.run([str(ray), "status", "--address", found[1]], capture_output=True).returncode == 0:
                break
            time.sleep(1)
        yield found[1]
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # `ray start --block` stops its node on SIGTERM
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def test_three_concurrent_studies_on_postgres_behind_mlflow_server(pg, ray_head, tmp_path):
    from mlflow.tracking import MlflowClient

    from bnnsearch.cost import STATIC_COST
    from bnnsearch.methods import get_method

    with mlflow_server(pg, str(tmp_path / "artifacts"), workers=2) as uri:
        drivers = {}
        for method, params in ARMS.items():
            sp = tmp_path / f"{method}.yaml"
            sp.write_text(yaml.safe_dump({
                "method": method, "objective": {"metric": "val/acc", "mode": "max"},
                "fixed": {"arch": "mlp", "arch_args": {"widths": [16, 16, 16]}, "data": "digits", "epochs": EPOCHS,
                          "batch_size": 64, "device": "cpu", "data_root": str(tmp_path / "data")},
                "params": params}))
            drivers[method] = subprocess.Popen(
                [sys.executable, "-m", "bnnsearch.cli", "sweep", str(sp), "--trials", str(TRIALS), "--sampler", "random",
                 "--concurrency", "1", "--address", ray_head, "--tracking-uri", uri, "--storage", str(tmp_path / "runs"),
                 "--name", f"pg-{method}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        outs = {m: p.communicate(timeout=500)[0] for m, p in drivers.items()}
        for m, p in drivers.items():
            assert p.returncode == 0, f"{m}:\n{outs[m][-3000:]}"

        c = MlflowClient(uri)
        (exp,) = [e for e in c.search_experiments() if e.name == "bnnsearch/digits/mlp"]
        parents = c.search_runs([exp.experiment_id], "tags.`bnnsearch.kind` = 'study'")
        assert sorted(r.data.tags["bnnsearch.study"] for r in parents) == sorted(f"pg-{m}" for m in ARMS)
        # a method's extra evaluations (Method.eval_variants) are made after the last epoch only
        final_only = {f"{split}/acc_{name}" for m in ARMS for name in get_method(m).eval_variants()
                      for split in ("val", "test")}
        for parent in parents:
            pid = parent.info.run_id
            assert parent.info.status == "FINISHED"
            kids = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{pid}'")
            assert len(kids) == TRIALS and all(k.data.tags["bnnsearch.kind"] == "trial" for k in kids)
            assert len({k.data.tags["bnnsearch.trial_id"] for k in kids}) == TRIALS
            for k in kids:
                assert k.info.status == "FINISHED"
                assert len(k.data.metrics) > 10
                for key in k.data.metrics:  # every epoch's metrics present exactly once
                    steps = sorted(m.step for m in c.get_metric_history(k.info.run_id, key))
                    want = [1] if key in STATIC_COST else [EPOCHS] if key in final_only else list(range(1, EPOCHS + 1))
                    assert steps == want, (parent.data.tags["bnnsearch.study"], key, steps)
                assert {a.path for a in c.list_artifacts(k.info.run_id)} >= {"config.yaml", "cost.json"}
            for key in ("trial_state", "best_so_far"):  # the parent's per-trial record: steps 1..N once
                steps = sorted(m.step for m in c.get_metric_history(pid, key))
                assert steps == list(range(1, TRIALS + 1)), (key, steps)
