"""Ray Tune's on-disk study state, made safe to resume: whole copies of ``tuner.pkl`` and of the
last whole set of experiment-snapshot files (a SIGKILL can leave either half-written), their
repair before ``Tuner.restore``, and a log filter for one harmless race in Ray's snapshot copy."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

from .runio import copy_whole

class TempFileRace:
    """A logging filter for Ray Tune's experiment-state logger. Ray writes each snapshot file in
    its driver staging folder as ``.<uuid>-tmp-...`` and renames it, while the previous snapshot's
    copy to the study folder may still be listing that folder in a background thread: the copy
    then fails on the renamed temp file and Ray logs the failure with a traceback. The snapshot is
    whole (the rename is atomic) and Ray copies the folder again at once, after the write that
    raced (``experiment_state.checkpoint``: write, wait for the previous copy, start the next);
    resume has its own copy besides (``bnnsearch_state/``). Only that record is dropped: any other
    failure to save the state is still logged."""

    def filter(self, record) -> bool:
        if not record.getMessage().startswith("Saving experiment state to storage") or not record.exc_info:
            return True
        e = record.exc_info[1]
        return not (isinstance(e, FileNotFoundError) and "-tmp-" in str(e) and "/." in str(e))


def quiet_temp_file_race() -> None:
    import logging

    log = logging.getLogger("ray.tune.execution.experiment_state")
    if not any(isinstance(f, TempFileRace) for f in log.filters):
        log.addFilter(TempFileRace())



_TUNER_PKL, _TUNER_BAK = "tuner.pkl", "bnnsearch_tuner.pkl"


def backup_tuner_pkl(exp_dir: Path) -> None:
    """Keep a copy of Ray's tuner.pkl once it is whole: Ray rewrites it in place (truncate, then
    write) and a SIGKILL in between left it empty, so the study could not be resumed (seen in a
    fresh-clone run of the two-SIGKILL test: EOFError in Tuner.restore)."""
    src = Path(exp_dir) / _TUNER_PKL
    if src.exists() and src.stat().st_size > 0:
        copy_whole(src, Path(exp_dir) / _TUNER_BAK)


def repair_tuner_pkl(exp_dir: Path) -> None:
    """Before a resume: an empty or missing tuner.pkl is restored from the copy (its content —
    trainable, configs — is the same in every run of the study)."""
    src, bak = Path(exp_dir) / _TUNER_PKL, Path(exp_dir) / _TUNER_BAK
    if bak.exists() and (not src.exists() or src.stat().st_size == 0):
        copy_whole(bak, src)


_STATE_BAK = "bnnsearch_state"  # the last whole set of Ray's snapshot files (one session's)
_STATE_FILES = ("experiment_state-{}.json", "search_gen_state-{}.json", "searcher-state-{}.pkl")


def snapshot_files(folder: Path) -> list[Path]:
    """Ray's newest snapshot set in a folder: experiment_state-<session>.json with the greatest
    name (the one Tuner.restore reads) and the searcher files of the same session."""
    states = sorted(Path(folder).glob("experiment_state-*.json"), key=lambda p: p.name)
    if not states:
        return []
    session = states[-1].name[len("experiment_state-"):-len(".json")]
    return [f for t in _STATE_FILES if (f := Path(folder) / t.format(session)).exists()]


def _session(folder: Path) -> str:
    """The session name of the newest snapshot set in a folder ('' when there is none)."""
    files = snapshot_files(folder)
    return files[0].name[len("experiment_state-"):-len(".json")] if files else ""


def _progress(files: list[Path]) -> tuple[int, int] | None:
    """How far a snapshot set of Ray's got — (trials, training iterations summed over their last
    results), both only grow while a study runs — or None when the set is not consistent: it
    does not read back whole (experiment_state is JSON, the searcher files are pickles), or its
    searcher has generated a different number of trials than its trial list holds (a set Ray
    wrote in one go never has; a copy cut by a kill may pair a newer searcher with an older
    trial list)."""
    try:
        trials = json.loads(files[0].read_bytes())["trial_data"]
        state = {f.name.split("-", 1)[0]: pickle.loads(f.read_bytes()) for f in files[1:]}
    except Exception:  # noqa: BLE001 - any failure to read back means the set is cut short
        return None
    gen = state.get("search_gen_state")
    counter = gen.get("counter") if isinstance(gen, dict) else None
    if counter is not None and counter != len(trials):
        return None
    iterations = 0
    for t in trials:
        try:
            iterations += int(json.loads(t[1]).get("last_result", {}).get("training_iteration") or 0)
        except Exception:  # noqa: BLE001 - a trial that never reported
            pass
    return len(trials), iterations


def backup_snapshot(staging: Path, exp_dir: Path, seen: tuple | None) -> tuple | None:
    """Keep a whole, consistent copy of Ray's snapshot set. Ray writes it into the driver's
    staging folder and copies that into the experiment folder in a background thread, file by
    file and in place: a SIGKILL during the copy leaves a file cut short (Tuner.restore then
    logs a JSONDecodeError and resumes with no trials) or a searcher newer than the trial list
    (the resumed study then believes every trial was started and runs none), and a kill before
    the copy leaves the folder's set behind staging's. Called from the driver's callback (a
    trial's completion, a result that carries a checkpoint), i.e. between two of Ray's
    synchronous writes to staging, so staging holds one consistent set; copied when it changed
    since ``seen``. Returns what was seen."""
    files = snapshot_files(staging)
    try:
        key = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError:
        return seen
    if not files or key == seen:
        return seen
    tmp, bak, old = (Path(exp_dir) / (_STATE_BAK + x) for x in (".tmp", "", ".old"))
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        if bak.exists():  # swap in; a kill between the renames leaves .old, which a repair reads
            shutil.rmtree(old, ignore_errors=True)
            bak.rename(old)
        tmp.rename(bak)
        shutil.rmtree(old, ignore_errors=True)
    except OSError:  # a safety net only (e.g. a full disk): the study goes on without a new copy
        return seen
    return key


def repair_snapshot(exp_dir: Path) -> bool:
    """Before a resume: Ray's newest snapshot set is replaced by the last whole copy (see
    backup_snapshot) when it is not consistent (a file cut short, or a searcher newer than the
    trial list) or when the copy got further (Ray's background copy into the experiment folder
    lagged behind the kill, so its set misses a checkpoint the copy names). Trials recorded
    after the set used are replayed and reconciled as after any kill. An inconsistent set with
    no copy is removed (Ray then reads the previous session's set, if any). True if repaired."""
    exp_dir = Path(exp_dir)
    newest = snapshot_files(exp_dir)
    if not newest:
        return False
    at = _progress(newest)
    bak, got = None, None
    for b in (exp_dir / _STATE_BAK, exp_dir / (_STATE_BAK + ".old")):
        files = snapshot_files(b) if b.is_dir() else []
        if files and (got := _progress(files)) is not None:
            bak = b
            break
    if at is not None and (got is None or at >= got or bak and _session(bak) != _session(exp_dir)):
        return False  # (a copy from an earlier session is older than any set of this one)
    for f in newest:
        f.unlink()
    for f in sorted(bak.iterdir()) if bak else []:
        copy_whole(f, exp_dir / f.name)
    return True

