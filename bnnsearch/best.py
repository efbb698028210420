"""Pick the best trials of a study (or of a whole experiment) from the MLflow store."""
from __future__ import annotations

from .errors import UserError
from .tracking import STUDY_TAG, Tracker


def _unfinished(parent) -> str | None:
    """Why a study's trials so far are not its result, or None for a finished study."""
    name = parent.data.tags.get(STUDY_TAG, parent.info.run_name)
    status = parent.info.status
    if status == "FINISHED":
        return None
    if status == "KILLED":
        n = parent.data.tags.get("n_finished_trials", "?")
        return (f"study {name} was interrupted after {n} finished trials: its best so far, not its result (add "
                f"--resume --name {name} to the command that started it to complete it)")
    if status == "FAILED":
        return f"study {name} failed: its best so far, not its result"
    return (f"study {name} is not finished (MLflow run {status}: still running, or its driver was killed): "
            "its best so far, not its result")


def best_trials(target: str, uri: str | None, experiment: str | None, top: int) -> tuple[list[dict], str, list[str]]:
    """Top ``top`` finished full-budget trials of study ``target`` (or of experiment ``target``),
    the best trial's resolved config YAML, and a note for each study among them that is not
    finished (running, interrupted or failed: its best so far is not its result)."""
    from .tracking import default_tracking_uri, read_store

    if top < 1:
        raise UserError(f"--top {top}: must be >= 1")
    _, client = read_store(uri)
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise UserError(f"--experiment {experiment!r}: no such experiment in {uri or default_tracking_uri()} "
                            f"(there: {', '.join(names) or 'none'})")
        exps = [exp]
    else:
        exps = client.search_experiments()
    runs, study = [], None
    for e in exps:
        tr = Tracker.from_client(client, e.experiment_id)
        if e.name == target:
            runs = tr.trial_runs()
            break
        found = tr.trial_runs(target)
        if found:
            runs, study = found, target
            break
    if not runs:
        raise UserError(f"no study or experiment named {target!r} with finished trials in {uri or default_tracking_uri()}")
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
    modes, notes = {}, []
    for pid in sorted(parents):
        p = client.get_run(pid)
        modes[pid] = (p.data.params.get("metric", "val/acc"), p.data.params.get("mode", "max"))
        if (note := _unfinished(p)) is not None:
            notes.append(note)
        if "objectives" in p.data.params:  # an AutoML study: one objective of several
            name = p.data.tags.get(STUDY_TAG, p.info.run_name)
            notes.append(f"study {name} has several objectives: ranked here by the first ({modes[pid][1]} "
                         f"{modes[pid][0]}) among its feasible trials; its Pareto front is pareto.json (in its --out "
                         "folder and on its MLflow run) and the dashboard's AutoML section")
    metric, mode = next(iter(modes.values()))
    if len(set(modes.values())) > 1:
        raise UserError(f"{target!r} mixes studies with different objectives {sorted(set(modes.values()))}; name one study")
    rows, over = [], 0
    for r in runs:
        if r.data.tags.get("bnnsearch.status") != "complete" or "objective" not in r.data.metrics:
            continue
        if r.data.tags.get("bnnsearch.feasible") == "0":  # over a hard limit (constraints:): never best
            over += 1
            continue
        rows.append({"study": r.data.tags.get(STUDY_TAG, study), "trial": r.data.tags.get("bnnsearch.trial_id"),
                     "value": r.data.metrics["objective"], "run_id": r.info.run_id, "metric": metric,
                     "pack_size": int(r.data.tags.get("bnnsearch.pack_size", 1)),
                     "finished": int(r.data.tags.get("bnnsearch.trial_index", 2**62))})
    if not rows:
        raise UserError(f"{target!r} has no complete full-budget trial yet"
                        + (f" within its hard limits ({over} over them)" if over else ""))
    # ties: the trial that finished first ([k/N]; the study's own ranking does the same), then by study
    rows.sort(key=lambda x: (-x["value"] if mode == "max" else x["value"], x["finished"], x["study"]))
    return rows[:top], Tracker.from_client(client).download_text(rows[0]["run_id"], "config.yaml"), sorted(notes)
