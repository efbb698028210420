"""How many trials per second can a tracking store record, with several studies writing at once?

    python benchmarks/tracking_store.py [--procs 3] [--trials 20] [--epochs 10] [--stores sqlite,server-pg]

One real trial (a small MLP on digits) is trained once to get a real record: its resolved
config, its cost table and every epoch's metrics. Then each of ``--procs`` processes records
``--trials`` copies of that trial into its own study, through the same ``Tracker`` calls the
study driver makes (child run + params, config and cost artifacts, one metric batch per epoch,
status tags, the parent's per-trial step), all processes at once. Prints trials/s per store and
the ratio against the first store of the list, measured in the same run.

Stores: ``sqlite`` (a local SQLite file, the default store; one process only, since SQLite has
one writer), ``server-sqlite`` (``mlflow server`` over SQLite) and ``server-pg`` (``mlflow server``
over a PostgreSQL server from Debian's packages, started here: ``make postgres`` installs it).
The training is excluded: this is the ceiling the store puts on a study's trial rate.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stores import mlflow_server, postgres  # noqa: E402


def real_record(tmp: str, epochs: int) -> dict:
    from bnnsearch.config import dump, resolve
    from bnnsearch.engine import fit

    cfg = resolve(dict(method="filtered", arch="mlp", data="digits", epochs=epochs, batch_size=64, device="cpu",
                       data_root=tmp, arch_args={"widths": [32, 32, 32]}))
    res = fit(cfg, threads=1)
    rows = [r.__dict__ for r in res.cost_rows]
    hist = [{k: v for k, v in h.items() if "/" in k or k in ("epoch", "objective", "diverged")} for h in res.history]
    return {"config": cfg.to_dict(), "yaml": dump(cfg), "cost": {"rows": rows}, "history": hist}


def record_study(uri: str, study: str, rec: dict, trials: int, out) -> None:
    from bnnsearch.tracking import Tracker

    tr = Tracker(uri, "bench/tracking_store")
    parent = tr.start_study(study, {"method": "filtered", "sampler": "random"}, {"trials": trials})
    t0 = time.perf_counter()
    best = None
    for k in range(1, trials + 1):
        rid = tr.start_trial(parent, f"t{k:05d}", f"trial_{k}", rec["config"], study)
        tr.log_text(rid, rec["yaml"], "config.yaml")
        tr.log_json(rid, rec["cost"], "cost.json")
        for m in rec["history"]:
            tr.log_metrics(rid, m, step=int(m["epoch"]))
            if m["epoch"] == 1:
                tr.set_tags(rid, {"node_id": "bench"})
        value = rec["history"][-1]["val/acc"]
        tr.set_tags(rid, {"bnnsearch.status": "complete", "diverged": 0})
        tr.finish(rid)
        tr.set_tags(rid, {"bnnsearch.trial_index": k, "bnnsearch.trial_value": value})
        best = value if best is None else max(best, value)
        tr.log_metrics(parent, {"trial_state": 1.0, "trial_value": value, "best_so_far": best}, step=k)
    tr.finish(parent)
    out.put(time.perf_counter() - t0)


def measure(uri: str, rec: dict, procs: int, trials: int, tag: str) -> float:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    ps = [ctx.Process(target=record_study, args=(uri, f"{tag}-{i}", rec, trials, q)) for i in range(procs)]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    wall = time.perf_counter() - t0
    if any(p.exitcode for p in ps):
        raise RuntimeError(f"{tag}: a recording process failed")
    busy = [q.get() for _ in ps]  # recording time of each process (excludes its start-up)
    return procs * trials / max(busy), wall


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, default=3, help="studies recording at once")
    ap.add_argument("--trials", type=int, default=20, help="trials per study")
    ap.add_argument("--epochs", type=int, default=10, help="epochs per trial record")
    ap.add_argument("--workers", type=int, default=2, help="mlflow server workers")
    ap.add_argument("--stores", default="sqlite,server-sqlite,server-pg")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    stores = args.stores.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        rec = real_record(tmp, args.epochs)
        n_metrics = len(rec["history"][0])
        print(f"record per trial: {len(rec['config'])} config keys, {args.epochs} epochs x {n_metrics} metrics, "
              f"2 artifacts; {args.procs} studies x {args.trials} trials at once (sqlite: 1 study)")
        for store in stores:
            with contextlib.ExitStack() as st:
                procs = args.procs
                if store == "sqlite":
                    uri, procs = f"sqlite:///{tmp}/direct.db", 1
                elif store == "server-sqlite":
                    uri = st.enter_context(mlflow_server(f"sqlite:///{tmp}/server.db", f"{tmp}/art-s", args.workers))
                elif store == "server-pg":
                    db = st.enter_context(postgres())
                    uri = st.enter_context(mlflow_server(db, f"{tmp}/art-pg", args.workers))
                else:
                    ap.error(f"--stores: unknown store {store!r}")
                rate, wall = measure(uri, rec, procs, args.trials, store)
                results[store] = {"trials_per_s": rate, "procs": procs, "wall_s": wall}
                ref = results[stores[0]]["trials_per_s"]
                print(f"{store:14s} {procs} x {args.trials} trials: {rate:7.2f} trials/s  ({rate / ref:4.2f}x {stores[0]})",
                      flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
