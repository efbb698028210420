"""The study's MLflow record, written by the driver alone (a Ray Tune callback, so the SQLite
default has one writer): a child run per trial or packed member with its per-epoch metrics, the
parent run's per-trial steps and best-so-far, and the progress lines."""
from __future__ import annotations

from typing import TYPE_CHECKING

import json
import time
from pathlib import Path

from ray import tune

from .cost import STATIC_COST
from .raystate import backup_snapshot
from .results import (CKPT_FLAG, PACK_KEY, earlier_results, feasible, member_results, members_of, objective_keys,
                      trial_metrics)
from .searcher import read_journal
from .tracking import TRIAL_TAG
from .trial import trial_config

if TYPE_CHECKING:
    from .sweep import SweepArgs

FLUSH_S = 3.0  # the driver writes a trial's buffered epoch metrics to MLflow at least this often


def _error_text(trial) -> str:
    """The last line of a failed trial's error (the exception message), for the MLflow tag."""
    try:
        err = trial.get_error()
        text = str(err) if err is not None else ""
    except Exception:  # noqa: BLE001 - best effort: the error file may be missing
        text = ""
    if not text and getattr(trial, "error_file", None) and Path(trial.error_file).exists():
        text = Path(trial.error_file).read_text()
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "unknown error")[-500:]


def run_status(tags: dict) -> str:
    """The MLflow run status of a finished trial from its ``bnnsearch.status`` tag."""
    return {"complete": "FINISHED", "diverged": "FINISHED", "failed": "FAILED"}.get(tags.get("bnnsearch.status"), "KILLED")


class MlflowCallback(tune.Callback):
    """Driver-side Tune callback: MLflow child runs, the parent's per-trial record, progress.

    The parent's record: the k-th finished trial gets ``bnnsearch.trial_index = k`` on its run
    (set first), then step k of ``trial_state`` on the parent (1 with a full-budget value, 0
    pruned or failed), ``trial_value`` and ``best_so_far``. After a resume the record is rebuilt
    from the child runs' tags (a step the kill left unwritten is written), so any number of
    kills and resumes leaves steps 1..N exactly once and best-so-far never decreasing."""

    INDEX, VALUE = "bnnsearch.trial_index", "bnnsearch.trial_value"
    OBJS, FEASIBLE = "bnnsearch.objectives", "bnnsearch.feasible"  # multi-objective / constrained studies
    FINISHED = ("complete", "diverged", "stopped early", "failed")

    def __init__(self, args: SweepArgs, parent_id: str, uri: str, tracker=None, exp_dir: str | None = None):
        self.args, self.parent_id, self.uri, self.exp_dir = args, parent_id, uri, exp_dir
        self._setup_state(tracker)

    def _setup_state(self, tracker=None):
        from .tracking import Tracker

        # An MLflow client on SQLite takes seconds to open: share the driver's; rebuild on unpickle.
        self.tracker = tracker or Tracker(self.uri, self.args.experiment_name())
        # Epoch metrics are buffered per run and written in one request per run (each request
        # costs ~30 ms on SQLite): when a trial hands Ray a checkpoint (so MLflow holds every
        # epoch a resumed trial skips), when a run ends, at the end, and at least every FLUSH_S.
        self.buffer: dict[str, list] = {}
        self.buffer_t: dict[str, float] = {}
        self.tag_buffer: dict[str, dict] = {}  # tags written with the run's next metrics
        children = self.tracker.child_runs(self.parent_id)  # reconcile after a resume
        self.runs = {r.data.tags[TRIAL_TAG]: r.info.run_id for r in children if r.data.tags.get(TRIAL_TAG)}
        self.logged = {tid: self.tracker.last_step(rid) for tid, rid in self.runs.items()}
        self.indexed = {r.info.run_id: int(r.data.tags[self.INDEX]) for r in children if self.INDEX in r.data.tags}
        for r in children:  # counted, and the driver died before the run was marked ended
            if r.info.status == "RUNNING" and self.INDEX in r.data.tags:
                self.tracker.finish(r.info.run_id, run_status(r.data.tags))
        self.finished = sum(r.data.tags.get("bnnsearch.status") in self.FINISHED for r in children)
        self.failed = sum(r.data.tags.get("bnnsearch.status") == "failed" for r in children)
        self.best = None
        self.values: list = []
        self.points: list = []  # objective vectors of the feasible full-budget trials (hypervolume)
        by_index = sorted((int(r.data.tags[self.INDEX]), r) for r in children if self.INDEX in r.data.tags)
        states = self.tracker.steps(self.parent_id, "trial_state")
        for k, r in by_index:
            v = r.data.tags.get(self.VALUE)
            objs = r.data.tags.get(self.OBJS)
            self._record(k, None if v in (None, "") else float(v), r.data.params, r.info.run_id, log=k not in states,
                         ok=r.data.tags.get(self.FEASIBLE, "1") == "1", objs=json.loads(objs) if objs else None)

    def _flush(self, rid: str | None = None, tags: dict | None = None) -> None:
        """Write buffered epoch metrics and tags (all runs', or one run's, with ``tags`` added)
        to MLflow, one request per run."""
        for r in [rid] if rid is not None else list(set(self.buffer) | set(self.tag_buffer)):
            entries = self.buffer.pop(r, None)
            self.buffer_t.pop(r, None)
            t = {**self.tag_buffer.pop(r, {}), **(tags or {})}
            if entries or t:
                self.tracker.log_metric_steps(r, entries or [], tags=t)

    def _flush_old(self) -> None:
        now = time.monotonic()
        for r, t in list(self.buffer_t.items()):
            if now - t >= FLUSH_S:
                self._flush(r)

    def __getstate__(self):  # Tune pickles callbacks with the experiment; the client is rebuilt
        return {"args": self.args, "parent_id": self.parent_id, "uri": self.uri, "exp_dir": self.exp_dir}

    def __setstate__(self, st):
        self.__dict__.update(st)
        self._setup_state()

    def _record(self, k: int, value, config, rid: str, log: bool = True, ok: bool = True, objs=None):
        """Step k of the parent's per-trial record (value None: no full-budget value; ``ok``
        False: over a hard limit, never best). Multi-objective studies also log the
        hypervolume of the feasible full-budget trials so far (a fixed reference point)."""
        space = self.args.space
        self.values.append(value)
        better = (lambda a, b: a > b) if space.mode == "max" else (lambda a, b: a < b)
        if value is not None and ok and (self.best is None or better(value, self.best[0])):
            self.best = (value, config, rid)
        if value is not None and ok and objs is not None:
            self.points.append(objs)
        if log:
            m = {"trial_state": float(value is not None)}
            if value is not None:
                m["trial_value"] = value
            if self.best is not None:
                m["best_so_far"] = self.best[0]
            if space.multi:
                from .automl import hypervolume

                m["hypervolume"] = hypervolume(self.points, space.objectives, space.refs, space.log_axes)
            self.tracker.log_metrics(self.parent_id, m, step=k)

    def _count(self, rid: str, value, config, last: dict | None = None, tags: dict | None = None,
               status: str = "FINISHED") -> None:
        """End a trial's run: its buffered metrics, ``tags`` and its index k (the k-th finished
        trial) in one request, then the run marked ended (``status``), then step k of the
        parent's record. A kill between the requests leaves a counted run RUNNING (ended on
        resume, see _setup_state) or a step unwritten (written on resume), never a step whose
        run has no index."""
        tags = dict(tags or {})
        new = rid not in self.indexed  # False: counted before a resume (a replayed trial finishing again)
        if new:
            k = len(self.indexed) + 1
            self.indexed[rid] = k
            space = self.args.space
            tags.update({self.INDEX: k, self.VALUE: "" if value is None else value})
            ok, objs = feasible(last or {}), None
            if space.constraints:
                tags[self.FEASIBLE] = int(ok)
            if space.multi and value is not None:
                objs = [float(last[key]) for key in objective_keys(space)]
                tags[self.OBJS] = json.dumps(objs)
        self._flush(rid, tags)
        self.tracker.finish(rid, status)
        if new:
            self._record(k, value, config, rid, ok=ok, objs=objs)

    def _adopt(self, mid: str) -> str | None:
        """The MLflow run of the trial (or member) this one replays (the same config after a
        driver kill)."""
        if not self.exp_dir:
            return None
        for e in read_journal(Path(self.exp_dir)):
            if e["trial_id"] == mid and e.get("replay_of") in self.runs:
                rid = self.runs[e["replay_of"]]
                self.tracker.set_tags(rid, {TRIAL_TAG: mid, "bnnsearch.replayed_as": mid})
                self.logged[mid] = self.logged.get(e["replay_of"], 0)
                return rid
        return None

    def _run(self, trial, mid: str | None = None, params: dict | None = None, k: int | None = None) -> str:
        """The MLflow child run of a trial, or of member ``mid`` (index k) of a packed trial."""
        mid = mid or trial.trial_id
        rid = self.runs.get(mid)
        if rid is None:
            rid = self._adopt(mid)
            if rid is not None:
                self.runs[mid] = rid
                return rid
            cfg = trial_config(self.args.space, trial.config if params is None else params, self.args.cpus_per_trial)
            # Named so the MLflow table tells trials apart: "<method> t<k>", k in start order.
            label = f"{cfg.method} t{len(self.runs) + 1:02d}"
            pack = {} if k is None else {"bnnsearch.pack": trial.trial_id, "bnnsearch.pack_member": k,
                                         "bnnsearch.pack_size": len(trial.config[PACK_KEY])}
            rid = self.tracker.start_trial(self.parent_id, mid, label, cfg.to_dict(), self.args.study_name(), tags=pack)
            self.runs[mid] = rid
            self.logged[mid] = 0
            from .config import dump

            self.tracker.log_texts(rid, {"config.yaml": dump(cfg),
                                         "cost.json": json.dumps(self._cost(cfg), indent=1, default=str)})
        return rid

    def _cost(self, cfg):
        """The trial's inference cost table. The model needs only the data's shape and class
        count: those are read once per dataset (loading the data for every trial cost more
        than the table itself)."""
        from types import SimpleNamespace

        from .engine import build_model, load_data
        from .methods import get_method

        try:
            d = cfg.to_dict()
            key = json.dumps({k: d.get(k) for k in ("data", "data_root", "data_args")}, sort_keys=True, default=str)
            shapes = self.__dict__.setdefault("_shapes", {})
            if key not in shapes:
                data = load_data(cfg, "cpu")
                shapes[key] = SimpleNamespace(in_shape=data.in_shape, num_classes=data.num_classes)
            data, method = shapes[key], get_method(cfg.method)
            model = build_model(cfg, data, method, cfg.hp(), "cpu")
            rows, totals = method.inference_cost(model, data.in_shape)
            return {"rows": [r.__dict__ for r in rows], "totals": totals}
        except Exception as e:  # noqa: BLE001 - a trial whose data is missing fails in its worker too
            return {"error": f"{type(e).__name__}: {e}"}

    def _epochs(self, params: dict) -> int:
        return self.args.space.config(params, where="sampled config").epochs

    # Tune callback hooks ---------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        for mid, params, k in members_of(trial.trial_id, trial.config):
            known = mid in self.runs
            rid = self._run(trial, mid, params, k)
            if known and rid not in self.indexed:  # continues after an interrupt: RUNNING again
                self.tracker.reopen(rid)
                self.tracker.set_tags(rid, {"bnnsearch.status": "running"})

    def _log(self, mid: str, rid: str, result: dict) -> None:
        epoch = int(result.get("epoch", 0))
        resumed = int(result.get("resumed_from_epoch", 0))
        if resumed and epoch == resumed + 1:
            self.tag_buffer.setdefault(rid, {})["bnnsearch.resumed_from_epoch"] = resumed
        if epoch <= self.logged.get(mid, 0):
            return  # already recorded before a resume
        keep = {k: v for k, v in result.items() if ("/" in k or k in ("epoch", "objective", "diverged"))
                and not isinstance(v, dict) and (epoch == 1 or k not in STATIC_COST)}  # inference cost: once
        self.buffer.setdefault(rid, []).append((keep, epoch))
        self.buffer_t.setdefault(rid, time.monotonic())
        self.logged[mid] = epoch
        if epoch == 1:
            self.tag_buffer.setdefault(rid, {})["node_id"] = result.get("node_id", "")

    def _keep_snapshot(self, trial) -> None:
        """Ray does not copy its snapshot atomically: keep a whole copy (see backup_snapshot)."""
        if self.exp_dir:
            self._state_seen = backup_snapshot(Path(trial.local_experiment_path), Path(self.exp_dir),
                                                getattr(self, "_state_seen", None))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get(CKPT_FLAG):  # the copy then names the checkpoint before this one
            self._keep_snapshot(trial)
        members = member_results(result)
        if members is None:
            rid = self._run(trial)
            for r in [*earlier_results(result), result]:  # held-back epochs first (see _Sender)
                self._log(trial.trial_id, rid, trial_metrics(r))
            if result.get(CKPT_FLAG):
                self._flush(rid)
            self._flush_old()
            return
        # each report's members and its worker's fields, held-back reports first (see _Sender);
        # this report's members are decoded above
        def fields(r):
            return {x: r[x] for x in ("node_id", "resumed_from_epoch") if x in r}

        reports = [(member_results(r) or {}, fields(r)) for r in earlier_results(result)] + [(members, fields(result))]
        for mid, params, k in members_of(trial.trial_id, trial.config):
            m = members.get(str(k))
            rid = self._run(trial, mid, params, k)
            if m is None or rid in self.indexed:  # not reported yet, or already finished
                continue
            for ms, node in reports:
                if str(k) in ms:
                    self._log(mid, rid, {**ms[str(k)], **node})
            if result.get(CKPT_FLAG):
                self._flush(rid)
            if m.get("ended"):
                self._finish(trials, trial, mid, rid, m, self._epochs(params))
        self._flush_old()

    def _finish(self, trials, trial, mid: str, rid: str, last: dict, epochs: int) -> None:
        full = int(last.get("epoch", 0)) >= epochs
        status = "diverged" if last.get("diverged") else ("complete" if full else "stopped early")
        tags = {"bnnsearch.status": status, "diverged": int(bool(last.get("diverged")))}
        if getattr(trial, "num_failures", 0):  # its worker died and Ray retried it
            tags["bnnsearch.retries"] = trial.num_failures
        if rid not in self.indexed:
            self.finished += 1
        self._count(rid, last.get("objective") if full or last.get("diverged") else None,
                    trial.config if mid == trial.trial_id else dict(trial.config[PACK_KEY][int(mid.rsplit("#", 1)[1])]),
                    last, tags=tags, status=run_status(tags))
        self._progress(trials, trial, status, mid, last)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._keep_snapshot(trial)
        last = trial.last_result or {}
        members = member_results(last)
        for mid, params, k in members_of(trial.trial_id, trial.config):
            rid = self._run(trial, mid, params, k)
            if rid in self.indexed:
                continue
            m = trial_metrics(last) if members is None else members.get(str(k), {})
            self._finish(trials, trial, mid, rid, m, self._epochs(params))

    def on_trial_error(self, iteration, trials, trial, **info):
        err = _error_text(trial)
        for mid, params, k in members_of(trial.trial_id, trial.config):
            rid = self._run(trial, mid, params, k)
            if rid in self.indexed:
                continue  # a member that had finished before the pack failed keeps its result
            self.finished += 1
            self.failed += 1
            self._count(rid, None, params, tags={"bnnsearch.status": "failed", "error": err}, status="FAILED")
            self._progress(trials, trial, "FAILED", mid)

    def close_budget_stops(self) -> None:
        """Trials the time budget stopped mid-run (Ray stops them without a completion
        callback): tagged stopped early and counted in the parent's per-trial record like any
        trial without a full-budget value. Call on a callback built after the study (its state
        read back from the store)."""
        for r in sorted(self.tracker.child_runs(self.parent_id), key=lambda r: r.info.start_time):
            if r.info.status != "RUNNING" or self.INDEX in r.data.tags or not r.data.tags.get(TRIAL_TAG):
                continue
            self._count(r.info.run_id, None, r.data.params, status="KILLED", tags={
                "bnnsearch.status": "stopped early", "bnnsearch.stopped_by": "time budget", "diverged": 0})

    def on_experiment_end(self, trials, **info):
        """Reconcile: a run whose trial is unknown to the resumed study and was not replayed (it
        should not happen: lost trials are replayed) is kept, as what happened, but re-tagged so
        it no longer counts as a trial of the study."""
        self._flush()
        known = {mid for t in trials for mid, _, _ in members_of(t.trial_id, t.config)}
        live = {self.runs[t] for t in known if t in self.runs}  # runs adopted by a replayed trial included
        for tid, rid in self.runs.items():
            if tid not in known and rid not in live:
                self.tracker.set_tags(rid, {"bnnsearch.kind": "lost_trial", "bnnsearch.status": "lost",
                                            "note": "started before the driver died, unknown to the resumed study"})
                self.tracker.finish(rid, "KILLED")

    def _progress(self, trials, trial, status, mid: str | None = None, last: dict | None = None):
        if self.args.quiet:
            return
        running = sum(1 for t in trials if t.status == "RUNNING")
        space = self.args.space
        m = last if last is not None else trial_metrics(trial.last_result)
        best = f"{self.best[0]:.4f}" if self.best else "-"
        vals = []
        for key, (metric, _) in zip(objective_keys(space), space.objectives):
            v = m.get(key)
            vals.append(f"{metric}=" + ((f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}") if isinstance(v, (int, float)) else "-"))
        if space.constraints and m and not feasible(m):
            vals.append("INFEASIBLE")
        who = str(trial) if mid is None or mid == trial.trial_id else f"{trial}#{mid.rsplit('#', 1)[1]}"
        total = self.args.trials or "?"
        print(f"[{self.finished}/{total}] {who} {status:<13} {'  '.join(vals)}"
              f"  best={best}  running={running} failed={self.failed}", flush=True)


