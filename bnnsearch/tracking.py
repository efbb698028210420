"""MLflow recording: the only module that imports mlflow.

Layout: one experiment per benchmark (``bnnsearch/<data>/<arch>`` unless named); a parent run
per study (tags: method, sampler, seed, space file hash, git sha, ``bnnsearch.study``) and a
child run per trial (``mlflow.parentRunId``, ``bnnsearch.trial_id`` = the Ray trial id) with
params = the resolved config, per-epoch metrics (batched), artifacts: the resolved config YAML and
the cost table. The parent run carries the best-so-far curve (step = trial index) and the best
config. All writes go through ``MlflowClient`` from the driver (SQLite has one writer).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path

from .errors import UserError

STUDY_TAG = "bnnsearch.study"
TRIAL_TAG = "bnnsearch.trial_id"


def default_tracking_uri() -> str:
    return "sqlite:///" + str((Path.cwd() / "mlflow.db").resolve())


def check_store(uri: str | None, must_exist: bool = False, flag: str = "--tracking-uri") -> str:
    """Fail in seconds, with one clear line, on a tracking store that cannot work: an MLflow
    server that does not answer (MLflow itself retries for minutes), a SQLite path that is not a
    database, or (``must_exist``, for commands that only read) a SQLite file that does not exist
    (opening one would silently create an empty store). Returns the URI."""
    uri = uri or default_tracking_uri()
    plain = uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks"))
    if plain and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise UserError(f"{flag} {uri}: a plain path is MLflow's file store, which this MLflow refuses; use an SQLite "
                        f"store (sqlite:///path/to/mlflow.db) or a server (http://host:5000)")
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)
        except urllib.error.HTTPError:
            pass  # it answers (a proxy or an auth layer may refuse /health): let MLflow talk to it
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"{flag} {uri}: no MLflow server answers there ({reason})") from None
    elif uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if path.is_dir():
            raise UserError(f"{flag} {uri}: {path} is a directory, not an SQLite database")
        if path.exists():
            with open(path, "rb") as f:
                head = f.read(16)
            if head and head != b"SQLite format 3\x00":
                raise UserError(f"{flag} {uri}: {path} is not an SQLite database")
        elif must_exist:
            raise UserError(f"{flag} {uri}: {path} does not exist (nothing recorded there; check the path)")
        elif not path.parent.is_dir():
            raise UserError(f"{flag} {uri}: folder {path.parent} does not exist")
    return uri


def registry_store(tracking: str | None, uri: str | None = None, must_exist: bool = False) -> str | None:
    """The Model Registry's URI: ``--registry-uri``, else MLflow's own ``MLFLOW_REGISTRY_URI``,
    else ``tracking``, the tracking store (MLflow's default; returned as given, its caller checks
    it). A registry of its own is checked as a tracking store is (``must_exist``:
    for reading a ``models:/`` URI, an SQLite registry that is not there is a mistake, not an
    empty registry). Errors name the flag or the variable the URI came from."""
    if uri:
        flag = "--registry-uri"
    elif os.environ.get("MLFLOW_REGISTRY_URI"):
        uri, flag = os.environ["MLFLOW_REGISTRY_URI"], "MLFLOW_REGISTRY_URI"
    else:
        return tracking
    return check_store(uri, must_exist=must_exist, flag=flag)


@contextlib.contextmanager
def mlflow_uris(tracking: str, registry: str):
    """MLflow's process-wide tracking and registry URIs set for the block (``mlflow.pytorch``'s
    model logging and loading read them), and the environment put back after it: MLflow's
    setters also write ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` into ``os.environ``, where
    ``registry_store`` would later read this block's registry as if the user had chosen it."""
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    try:
        mlflow.set_tracking_uri(tracking)
        mlflow.set_registry_uri(registry)
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def store_lock(uri: str):
    """Held while a process first opens an SQLite store: MLflow creates (or migrates) the tables
    on first use, and two commands starting together on a new store raced there — "table
    experiments already exists", or Alembic's "Online migration expected to match one row" for
    the loser, and a half-migrated store is not a risk worth taking. A ``flock`` on the
    database's folder (no lock file left behind), released when the store is open; a server
    store needs none."""
    from .runio import flocked

    if not uri.startswith("sqlite:///"):
        yield
        return
    with flocked(Path(uri[len("sqlite:///"):]).resolve().parent):
        yield


def read_store(uri: str | None, flag: str = "--tracking-uri"):
    """For commands that only read: the checked URI of an existing store (``check_store`` with
    ``must_exist``: opening a missing SQLite file would create an empty store) and an
    MlflowClient on it, with MLflow's info logging quiet."""
    import logging

    from mlflow.tracking import MlflowClient

    uri = check_store(uri, must_exist=True, flag=flag)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # after import: mlflow sets it on import
    return uri, MlflowClient(tracking_uri=uri)


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Every command that reads the store (best, dashboard, evaluate, ...) prints its own progress:
# no MLflow download bars or run URLs in between (read when MLflow downloads or logs).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


class Tracker:
    """Thin wrapper over MlflowClient for studies and trials."""

    def __init__(self, uri: str | None, experiment: str):
        import logging

        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # after import: mlflow sets it on import
        logging.getLogger("alembic").setLevel(logging.WARNING)
        from mlflow.tracking import MlflowClient

        self.uri = check_store(uri)
        self._mlflow = mlflow
        try:
            with store_lock(self.uri):  # the first use creates the store's tables
                self.client = MlflowClient(tracking_uri=self.uri)
                self.experiment_id = self._experiment_id(experiment)
        except Exception as e:  # a wrong URI or an unreachable server is a user error
            first = (str(e).strip().splitlines() or [""])[0]  # SQLAlchemy appends the statement and a link
            raise UserError(f"--tracking-uri {self.uri}: cannot use the MLflow store ({type(e).__name__}: {first})") from None
        self.experiment = experiment

    def _artifact_location(self, name: str) -> str | None:
        """A SQLite store keeps its artifacts beside it (<db folder>/mlartifacts/<experiment>), not in
        whatever ./mlruns the command runs in; a server decides for itself."""
        if not self.uri.startswith("sqlite:///"):
            return None
        import re

        root = Path(self.uri[len("sqlite:///"):]).resolve().parent / "mlartifacts"
        return (root / re.sub(r"[^A-Za-z0-9._-]+", "_", name)).as_uri()

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self._artifact_location(name))
        except Exception:  # another study created it between our read and our write
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @classmethod
    def from_client(cls, client, experiment_id: str | None = None) -> "Tracker":
        """A Tracker over an existing MlflowClient (reading back studies, no experiment created)."""
        tr = cls.__new__(cls)
        tr.client, tr.experiment_id, tr.uri = client, experiment_id, None
        return tr

    # ---- studies
    def find_study(self, study: str):
        runs = self.client.search_runs([self.experiment_id], f"tags.`{STUDY_TAG}` = '{study}' and tags.`bnnsearch.kind` = 'study'")
        return runs[0] if runs else None

    def start_study(self, study: str, tags: dict, params: dict, run_name: str | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name or study,
                                     tags={STUDY_TAG: study, "bnnsearch.kind": "study", **{k: str(v) for k, v in tags.items()}})
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def child_runs(self, parent_id: str) -> list:
        return self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                       max_results=10000)

    def children(self, parent_id: str) -> dict[str, str]:
        """Ray trial id -> child run id (for reconciling after a resume)."""
        return {r.data.tags.get(TRIAL_TAG): r.info.run_id for r in self.child_runs(parent_id) if r.data.tags.get(TRIAL_TAG)}

    def steps(self, run_id: str, key: str) -> dict[int, float]:
        return {m.step: m.value for m in self.client.get_metric_history(run_id, key)}

    # ---- trials
    def start_trial(self, parent_id: str, trial_id: str, name: str, config: dict, study: str,
                    tags: dict | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags={
            "mlflow.parentRunId": parent_id, TRIAL_TAG: trial_id, STUDY_TAG: study, "bnnsearch.kind": "trial",
            "method": config.get("method", ""), **{k: str(v) for k, v in (tags or {}).items()}})
        self.log_params(run.info.run_id, config)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in _flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict, step: int) -> None:
        self.log_metric_steps(run_id, [(metrics, step)])

    def log_metric_steps(self, run_id: str, entries: list[tuple[dict, int]], tags: dict | None = None) -> None:
        """Metrics of several steps, and tags, in as few requests as possible (1000 values
        each; the tags go with the last request, so they are written only with the metrics)."""
        from mlflow.entities import Metric, RunTag

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for metrics, step in entries for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        chunks = [items[i : i + 1000] for i in range(0, len(items), 1000)] or [[]]
        for i, chunk in enumerate(chunks):
            last = tags if i == len(chunks) - 1 else None
            if chunk or last:
                self.client.log_batch(run_id, metrics=chunk, tags=[RunTag(k, str(v)) for k, v in (last or {}).items()])

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag

        if tags:  # one request for all of them (a round trip each costs against a tracking server)
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, run_id: str, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(text)
            self.client.log_artifact(run_id, str(p))

    def log_json(self, run_id: str, obj, name: str) -> None:
        self.log_text(run_id, json.dumps(obj, indent=1, default=str), name)

    def log_texts(self, run_id: str, files: dict[str, str]) -> None:
        """Several small text artifacts in one call (one run lookup, one upload)."""
        with tempfile.TemporaryDirectory() as d:
            for name, text in files.items():
                (Path(d) / name).write_text(text)
            self.client.log_artifacts(run_id, d)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def reopen(self, run_id: str) -> None:
        """Mark a run RUNNING again (a resumed study, or a trial continuing after an interrupt)."""
        self.client.update_run(run_id, status="RUNNING")

    def last_step(self, run_id: str, key: str = "epoch") -> int:
        hist = self.client.get_metric_history(run_id, key)
        return max((m.step for m in hist), default=0)

    # ---- reading back (best, dashboards)
    def trial_runs(self, study: str | None = None):
        flt = "tags.`bnnsearch.kind` = 'trial'"
        if study:
            flt += f" and tags.`{STUDY_TAG}` = '{study}'"
        return self.client.search_runs([self.experiment_id], flt, max_results=50000)

    def download_text(self, run_id: str, name: str) -> str:
        with tempfile.TemporaryDirectory() as d:
            path = self.client.download_artifacts(run_id, name, d)
            return Path(path).read_text()


def snapshot(uri: str | None = None) -> dict:
    """Everything bnnsearch recorded in a tracking store, as plain dicts (for dashboards):
    {experiments: [{id, name, studies: [...], trials: [...], comparisons: [...]}], uri}."""
    uri, client = read_store(uri)

    def as_dict(r):
        return {"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
                "start": r.info.start_time, "tags": dict(r.data.tags), "params": dict(r.data.params),
                "metrics": dict(r.data.metrics)}

    out = []
    for e in client.search_experiments():
        runs = client.search_runs([e.experiment_id], "tags.`bnnsearch.kind` != ''", max_results=50000)
        if not runs:
            continue
        by_kind: dict[str, list] = {"study": [], "trial": [], "comparison": []}
        for r in runs:
            kind = r.data.tags.get("bnnsearch.kind")
            if kind in by_kind:
                by_kind[kind].append(as_dict(r))
        for s in by_kind["study"]:
            s["trial_values"] = study_values(client, s["run_id"])
        out.append({"id": e.experiment_id, "name": e.name, "studies": by_kind["study"],
                    "trials": by_kind["trial"], "comparisons": by_kind["comparison"]})
    return {"uri": uri, "experiments": out, "client": client}


def study_values(client, parent_id: str) -> list[float | None]:
    """A study's per-trial record in trial order: step k of ``trial_state`` is the k-th finished
    trial; its ``trial_value`` (a full-budget value) or None (pruned or failed). Studies recorded
    before ``trial_state`` existed have only their valued trials, in order."""
    values = {m.step: m.value for m in client.get_metric_history(parent_id, "trial_value")}
    states = {m.step for m in client.get_metric_history(parent_id, "trial_state")}
    if not states:
        return [values[k] for k in sorted(values)]
    return [values.get(k) for k in range(1, max(states) + 1)]


def metric_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]
