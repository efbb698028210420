import os
import subprocess
import sys
import time
from pathlib import Path

OPEN = r'''
import os, sys, time
from bnnsearch.errors import UserError
from bnnsearch.tracking import Tracker
db, me, go = sys.argv[1:4]
open(me, "w").close()  # imported: ready
while not os.path.exists(go):
    time.sleep(0.002)
try:
    Tracker("sqlite:///" + db, "exp")
    print("ok")
except UserError as e:
    print(e)
'''


def test_commands_starting_together_on_a_new_sqlite_store_all_open_it(tmp_path):
    """Two studies started at once on a store that does not exist yet both create MLflow's
    tables: without ``store_lock`` the losers failed ("table experiments already exists", or
    Alembic's "Online migration expected to match one row"; 10 of 12 processes in three rounds
    of four). Four processes are released together once all have imported; every one opens the
    store and they share one experiment."""
    from mlflow.tracking import MlflowClient

    db, go = tmp_path / "mlflow.db", tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(4)]
    root = Path(__file__).resolve().parents[1]
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, str(db), str(r), str(go)], cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for r in ready]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outs == ["ok"] * 4, outs
    names = [e.name for e in MlflowClient(f"sqlite:///{db}").search_experiments()]
    assert names.count("exp") == 1, names
    assert sorted(os.listdir(tmp_path)) == sorted(["go", "mlflow.db", *(r.name for r in ready)])  # no lock file left
