"""The trial side of a study: the one common trainable Ray Tune runs in its workers
(``engine.fit`` on a sampled configuration, ``engine.fit_pack`` on a pack of them), how it
reports its epochs to Ray (held back and sent together, ``_Sender``), and the scratch folders and
checkpoints that let a resumed study continue a trial where it was."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ray import tune

from .results import CKPT_FLAG, EARLIER, PACK_KEY, member_id, objective_fields, objective_keys, sanitize
from .spaces import SearchSpace

REPORT_S = 2.0  # a trial reports to Ray at least this often (and at its end, and with each checkpoint)


def trial_config(space: SearchSpace, config: dict, cpus: float):
    """The resolved run config of a trial. Its torch thread count is pinned to the trial's CPU
    allocation (oversubscribed threads are slow, and the count changes float reductions: a
    recorded config must name it to reproduce the trial's metrics exactly)."""
    import dataclasses

    cfg = space.config(config, where="sampled config")
    return cfg if cfg.threads else dataclasses.replace(cfg, threads=max(1, int(cpus)))



def work_dir(kind: str) -> Path:
    """A fresh scratch folder for one run of a trial (its engine checkpoints before Ray takes
    them), after removing those that killed workers left behind on this host.

    A trial removes its folder when it ends, but a worker killed with SIGKILL (a crash, the
    out-of-memory killer, a second Ctrl-C, a killed driver taking its Ray down) cannot, and a
    study that is killed and resumed again and again would fill the temp disk with checkpoints.
    The folder's name carries its owner, ``bnnsearch-<kind>-<host hash>-<pid>-...`` (the
    name, not a file inside: the folder's content travels in Ray checkpoints); a folder is an
    orphan when its owner is on this host and no longer runs. The host hash covers the host
    name and the process-id namespace (containers that share a temp directory and a host name
    but not their pids never judge each other's folders). Folders of another form (older
    versions) are left alone."""
    import re

    host = _host_key()
    tmp = Path(tempfile.gettempdir())
    for d in tmp.glob(f"bnnsearch-*-{host}-*"):
        m = re.fullmatch(rf"bnnsearch-(?:trial|pack)-{host}-(\d+)-.+", d.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"bnnsearch-{kind}-{host}-{os.getpid()}-"))


def _host_key() -> str:
    """8 hex digits naming this host and process-id namespace (see work_dir)."""
    import socket
    import zlib

    try:
        pid_ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:  # not Linux
        pid_ns = ""
    return f"{zlib.crc32((socket.gethostname() + '/' + pid_ns).encode()):08x}"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a reused pid reads as alive: its folder stays)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def trainable(config: dict, space: SearchSpace = None, cpus: float = 1.0, checkpoint_s: float = 30.0,
              asha: str | None = None, report_s: float = REPORT_S):
    """The one common trainable: engine.fit on the sampled config; every epoch's metrics reach
    Tune, in reports at most ``report_s`` apart (see _Sender; 0: one report per epoch)."""
    import ray

    from .engine import fit

    if PACK_KEY in config:
        return _pack_trainable(config, space, cpus, checkpoint_s, asha, report_s)
    cfg = trial_config(space, config, cpus)
    work = work_dir("trial")
    ckpt = tune.get_checkpoint()
    resumed_from = 0
    if ckpt is not None:
        with ckpt.as_directory() as d:
            shutil.copytree(d, work, dirs_exist_ok=True)
        resumed_from = checkpoint_epoch(work)
    # Reporting and checkpoints use ray.tune only (the API that has churned); the node id, for the
    # record, is a read-only call of Ray core: TuneContext does not expose it.
    node = ray.get_runtime_context().get_node_id()
    pid = os.getpid()
    send = _Sender(work, checkpoint_s, report_s)

    def report(m: dict):
        out = sanitize(m)
        top = objective_fields(m, space)  # what Ray and the searcher read (see trial_metrics)
        top.update({k: out[k] for k in ("epoch", "diverged") if k in out})
        top["node_id"] = node
        top["worker_pid"] = pid
        top["resumed_from_epoch"] = resumed_from  # 0: this run of the trial started from scratch
        top["metrics"] = json.dumps(out)
        send(top, final=bool(out.get("diverged")) or out["epoch"] >= cfg.epochs)

    try:
        fit(cfg, report, checkpoint_dir=work, save_due=send.due)
        send.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Sender:
    """``send(result)``: ``tune.report`` of a trial's per-epoch results.

    Checkpoints: the engine's state in ``work`` goes to Ray at most every ``checkpoint_s``
    seconds. The engine asks ``due()`` after each epoch and saves its state only when it is (a
    save Ray never receives would be lost with the worker); the epoch's ``send`` then hands
    that checkpoint over. A result carrying a checkpoint is flagged: the driver writes what it
    buffered before Ray can name that checkpoint.

    Coalescing: a Tune function trainable's ``report`` blocks until the driver has processed
    the result and asked for the next (Ray's synchronous reporting), and the driver saves its
    experiment snapshot after each. One report per epoch stalled a trial tens of milliseconds
    per epoch (57 ms per report of a pack of 8 MLPs on digits, whose epoch takes ~95 ms) and
    cost the driver of a 32-trial unpacked digits study ~40 % more CPU (README, Packed trials).
    So a result is held back unless ``report_s`` seconds passed since the last report, a
    checkpoint goes with it, or it is ``final``; the next report carries the held results under
    ``earlier`` (oldest first) and the driver records every epoch of them as if reported one by
    one. ``report_s = 0`` reports every epoch (Ray's ASHA decides on each reported result).
    ``flush()`` after training sends a held last result. What a report-holding trial costs: the
    driver's view of a running trial is up to ``report_s`` old (a time budget that stops it
    mid-run records its last reported epoch)."""

    def __init__(self, work: Path, checkpoint_s: float, report_s: float = 0.0):
        self.work, self.checkpoint_s, self.report_s = work, checkpoint_s, report_s
        self.last = self.last_report = time.monotonic()
        self.saved = False  # the engine saved this epoch's state: the next send hands it over
        self.held: list[dict] = []

    def due(self) -> bool:
        self.saved = time.monotonic() - self.last >= self.checkpoint_s
        return self.saved

    def __call__(self, out: dict, final: bool = False) -> None:
        now = time.monotonic()
        if not (self.saved or final or now - self.last_report >= self.report_s):
            self.held.append(out)
            return
        if self.held:
            out[EARLIER] = json.dumps(self.held)
            self.held = []
        self.last_report = now
        if self.saved:
            self.saved = False
            self.last = now
            out[CKPT_FLAG] = 1
            tune.report(out, checkpoint=tune.Checkpoint.from_directory(str(self.work)))
        else:
            tune.report(out)

    def flush(self) -> None:
        if self.held:
            last = self.held.pop()
            self(last, final=True)


def _pack_trainable(config: dict, space: SearchSpace, cpus: float, checkpoint_s: float, asha: str | None = None,
                    report_s: float = REPORT_S):
    """A packed Ray trial: ``engine.fit_pack`` on its members. One report per epoch carries
    every member's latest metrics under ``members`` (``{"0": {...}, ...}``; a member that
    ended has ``ended``: diverged or stopped); the trial's own ``objective`` is the best live
    member's (what Ray shows; the searcher and MLflow read the members). With ``asha`` (the
    study's member-level ASHA actor, bnnsearch/asha.py) each live member's objective is judged
    every epoch and a member below its rung's cutoff stops (``ended: stopped``) while the rest
    of the pack trains on."""
    import ray

    from .engine import fit_pack

    cfgs = [trial_config(space, c, cpus) for c in config[PACK_KEY]]
    work = work_dir("pack")
    ckpt = tune.get_checkpoint()
    resumed_from = 0
    latest: dict[str, dict] = {}
    if ckpt is not None:
        with ckpt.as_directory() as d:
            shutil.copytree(d, work, dirs_exist_ok=True)
        resumed_from = checkpoint_epoch(work)
        for k, st in enumerate(_checkpoint_members(work)):
            if st["history"] and not st["active"]:  # ended before the checkpoint: still reported
                latest[str(k)] = _member_report(st["history"][-1], space, "diverged" if st["diverged"] else "stopped")
    node = ray.get_runtime_context().get_node_id()
    pid = os.getpid()
    pending: list[dict] = []

    rungs = ray.get_actor(asha) if asha else None
    trial_id = tune.get_context().get_trial_id()

    def on_epoch(ms: dict[int, dict]):
        for k, m in ms.items():
            latest[str(k)] = _member_report(m, space, "diverged" if m.get("diverged") else None)
        stops: list[int] = []
        if rungs is not None:
            ask = [(member_id(trial_id, k), m["epoch"], latest[str(k)]["objective"]) for k, m in ms.items()
                   if not m.get("diverged")]
            stopped = set(ray.get(rungs.decide.remote(ask)))
            stops = [k for k in ms if member_id(trial_id, k) in stopped]
            for k in stops:
                latest[str(k)]["ended"] = "stopped"

        # The pack's own result carries every objective key the searcher names (Ray checks that
        # each is there); its values are the members' best per objective, for display only: the
        # searcher and the record read the members.
        best = {key: (max if mode == "max" else min)(latest[str(k)][key] for k in ms)
                for key, (_, mode) in zip(objective_keys(space), space.objectives)}
        pending[:] = [{"epoch": max(m["epoch"] for m in ms.values()), **best, "node_id": node,
                       "worker_pid": pid, "resumed_from_epoch": resumed_from, "pack/size": len(cfgs),
                       "members": json.dumps(latest)}]  # a string: see member_results
        return stops

    send = _Sender(work, checkpoint_s, report_s)
    epochs = cfgs[0].epochs

    def after_checkpoint():
        out = pending[0]
        send(out, final=out["epoch"] >= epochs or all(m.get("ended") for m in latest.values()))

    try:
        fit_pack(cfgs, on_epoch=on_epoch, after_checkpoint=after_checkpoint, checkpoint_dir=work, save_due=send.due)
        send.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _member_report(m: dict, space: SearchSpace, ended: str | None) -> dict:
    out = sanitize(m)
    out.update(objective_fields(m, space))
    if ended:
        out["ended"] = ended
    return out


def _checkpoint_members(work: Path) -> list[dict]:
    import torch

    from .engine import CKPT_NAME

    path = Path(work) / CKPT_NAME
    if not path.exists():
        return []
    st = torch.load(path, map_location="cpu", weights_only=True)
    return [{"history": m["history"], "active": m["active"], "diverged": m["diverged"]} for m in st["members"]]


def checkpoint_epoch(work: Path) -> int:
    """The epoch an engine checkpoint in ``work`` continues from (0 if none)."""
    import torch

    from .engine import CKPT_NAME

    path = Path(work) / CKPT_NAME
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) if path.exists() else 0

