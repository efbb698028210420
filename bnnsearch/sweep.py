"""Studies: Ray Tune drives one common trainable (``engine.fit``), an Optuna or BoTorch sampler
proposes configs, MLflow records them. This module is the driver: it checks a study's flags,
claims the study, starts or resumes it, runs Ray Tune and writes the study's summary. Its parts,
the modules that import ray: ``trial.py`` (the trainable, in Ray's workers), ``searcher.py``
(the samplers behind Ray's ``OptunaSearch``), ``record.py`` (the MLflow record, a Tune
callback) and ``raystate.py`` (Ray's on-disk state made safe to resume); ``results.py`` is what
a trial reports and how it is read back.

* One study per method (one search-space file); a fresh ``OptunaSearch`` and sampler per study.
  ``random``, ``tpe``, ``gp`` (Optuna's GPSampler) and ``botorch`` (optuna-integration's
  BoTorchSampler) all get the same number of startup (random) trials unless told otherwise.
* The paper defaults are the first trial when they lie inside the space (``points_to_evaluate``).
* Trials report their epochs through ``ray.tune.report`` (held back and sent together at most
  every ``REPORT_S`` seconds, see ``trial._Sender``), handing Ray a checkpoint of the engine's
  state at most every ``checkpoint_s`` seconds, so a resumed study continues an
  interrupted trial from its last checkpoint (re-run epochs are deterministic and are not
  recorded twice).
* Early stopping (``--scheduler asha``): a trial stopped before its full budget reaches the
  sampler as PRUNED, never as a complete full-budget result. Diverged trials (NaN/inf loss)
  reach it as COMPLETE with a worst-case value and are tagged ``diverged``. A trial that raises
  is retried up to ``--max-failures`` times, then marked failed; the study goes on.
* MLflow is written only by the driver (a Tune callback), so the SQLite default has one writer.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from . import interrupts
from .errors import Interrupted, UserError, named
from .raystate import backup_tuner_pkl, quiet_temp_file_race, repair_snapshot, repair_tuner_pkl
from .record import MlflowCallback, run_status
from .results import feasible, member_results, members_of, objective_keys, trial_metrics
from .runio import check_out_dir, flocked
from .searcher import JOURNAL, SAMPLERS, make_sampler, searcher_cls
from .spaces import SearchSpace
from .tracking import TRIAL_TAG
from .trial import REPORT_S, trainable, trial_config

# Looked up here by Ray's pickled state (tuner.pkl: the callback, the study's args and the
# searcher's functions) of studies recorded before this module was split in five: kept so that
# such a study can still be resumed (tests/test_sweep.py checks the names).
from .results import earlier_results, member_id  # noqa: F401
from .searcher import _ray_trial_ids, read_journal  # noqa: F401

SCHEDULERS = ("fifo", "asha")


@dataclass
class SweepArgs:
    space: SearchSpace
    trials: int = 20
    sampler: str = "tpe"
    seed: int = 0
    startup_trials: int = 5
    concurrency: int = 0  # 0: as many as the CPUs allow
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    scheduler: str = "fifo"
    address: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    storage: str = "./bnnsearch_runs"
    name: str | None = None
    resume: bool = False
    max_failures: int = 1
    quiet: bool = False
    seed_defaults: bool = True  # the paper defaults as the first trial (off in comparisons: equal designs)
    label: str | None = None  # the parent run's name in the MLflow UI (default: "<method> <sampler> s<seed>")
    checkpoint_s: float = 30.0  # hand Ray a trial checkpoint at most this often (0: every epoch)
    pack: int = 0  # members per Ray trial (packed trials); 0: the space file's ``pack:`` (default 1)
    points: tuple = ()  # configurations (sampler parameter values) evaluated first, e.g. a warm start
    warm_start: str = ""  # the experiment ``points`` came from (automl --warm-start): recorded, a resume compares it
    time_budget_s: float = 0.0  # stop starting trials after this many seconds (0: no limit); with
    # trials 0 the time budget alone ends the study

    def budget_text(self) -> str:
        parts = [f"{self.trials} trials"] if self.trials else []
        if self.time_budget_s:
            parts.append(f"{self.time_budget_s:g} s")
        return " or ".join(parts)

    def pack_size(self) -> int:
        return self.pack or self.space.pack

    def study_name(self) -> str:
        return self.name or f"{self.space.arm}-{self.sampler}-s{self.seed}"

    def experiment_name(self) -> str:
        fx = self.space.fixed
        return self.experiment or f"bnnsearch/{fx.get('data', 'mnist1d')}/{fx.get('arch', 'mlp')}"


SPACE_KEY = "bnnsearch.space_key"  # a study's SearchSpace.key(), a tag of its parent run


def recorded_differences(parent, a: SweepArgs) -> list[str]:
    """What a recorded study (its parent run) was run with that ``a`` changes, as ``--trials 3
    (now 6)``: the flags that define a study's result and its space's content. Empty when they
    agree. Concurrency, CPUs and the like are not compared: they change how fast, not what. A
    study recorded before its space key was kept is checked on its flags only."""
    params, tags = parent.data.params, parent.data.tags
    now = {"--trials": (params.get("trials"), a.trials), "--sampler": (params.get("sampler"), a.sampler),
           "--seed": (params.get("seed"), a.seed), "--startup-trials": (params.get("startup_trials"), a.startup_trials),
           "--pack": (params.get("pack"), a.pack_size()), "--scheduler": (tags.get("scheduler"), a.scheduler),
           "--time-budget": (params.get("time_budget_s", "0"), a.time_budget_s),
           # recorded since the space key was (a study from before is not checked on it)
           "--warm-start": (params.get("warm_start", "" if SPACE_KEY in tags else None), a.warm_start)}
    out = []
    for flag, (was, new) in now.items():
        if was is None:
            continue
        if not isinstance(new, str):  # numbers as MLflow keeps them ("20", "90.0"), shown alike
            was, new = f"{float(was):g}", f"{new:g}"
        if was != new:
            unit = "s" if flag == "--time-budget" else ""
            out.append(f"{flag} {was or 'none'}{unit} (now {new or 'none'}{unit})")
    if tags.get(SPACE_KEY) not in (None, a.space.key()):
        out.append(f"a different space ({a.space.path} compiles to another: a range, a fixed value or an objective changed)")
    return out



def check_args(a: SweepArgs) -> None:
    """Every flag checked before anything is created (a run, a directory, a Ray instance)."""
    if a.sampler not in SAMPLERS:
        raise UserError(f"--sampler {a.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if a.scheduler not in SCHEDULERS:
        raise UserError(f"--scheduler {a.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    if a.sampler in ("bandit", "tpe-cover") and a.space.method != "automl":
        raise UserError(f"--sampler {a.sampler} chooses among methods: it needs an AutoML space (methods:), "
                        f"and {a.space.path} has one method")
    if a.scheduler == "asha" and a.space.multi:
        raise UserError("--scheduler asha: early stopping judges one objective, and this study has "
                        f"{len(a.space.objectives)} (Optuna cannot prune multi-objective trials, optuna#3450); "
                        "use --scheduler fifo, or one objective")
    for flag, value, ok, need in (
            ("--trials", a.trials, a.trials >= 1 or (a.trials == 0 and a.time_budget_s > 0),
             ">= 1 (0 only with a time budget)"),
            ("--time-budget", a.time_budget_s, a.time_budget_s >= 0, ">= 0 seconds"),
            ("--startup-trials", a.startup_trials, a.startup_trials >= 0, ">= 0"),
            ("--seed", a.seed, a.seed >= 0, ">= 0"),
            ("--concurrency", a.concurrency, a.concurrency >= 0, ">= 0 (0: as many as the CPUs allow)"),
            ("--cpus-per-trial", a.cpus_per_trial, a.cpus_per_trial > 0, "> 0"),
            ("--gpus-per-trial", a.gpus_per_trial, a.gpus_per_trial >= 0, ">= 0"),
            ("--max-failures", a.max_failures, a.max_failures >= -1, ">= 0, or -1 for unlimited retries"),
            ("--checkpoint-s", a.checkpoint_s, a.checkpoint_s >= 0, ">= 0 (0: every epoch)"),
            ("--pack", a.pack, a.pack >= 0, ">= 1 (configurations trained together as one network; 0: the space "
                                           "file's pack:)")):
        if not ok:
            raise UserError(f"{flag} {value:g}: must be {need}")
    if a.name is not None and (a.name in ("", ".", "..") or any(c in a.name for c in "/\\")):
        # (--name ../x put a study's Ray results outside --storage, a/b in a folder of its own)
        raise UserError(f"--name {a.name!r}: a study's name is also its folder under --storage: give one without "
                        "'/' or '\\', not '.' or '..' (or leave --name out)")
    if not a.address:  # a cluster is asked after ray.init
        _check_resources(a, _local_resources(a))



def _check_resources(a: SweepArgs, res: dict) -> None:
    """A trial that asks for more than the whole cluster has would wait forever: say so now."""
    for flag, key, want in (("--cpus-per-trial", "CPU", a.cpus_per_trial), ("--gpus-per-trial", "GPU", a.gpus_per_trial)):
        have = res.get(key, 0.0)
        if want > have:
            where = f"the Ray cluster at {a.address}" if a.address else "this machine"
            raise UserError(f"{flag} {want:g}: {where} has {have:g} {key}s in all, so no trial could ever start")


def trials_at_once(a: SweepArgs, cpus: float) -> int:
    """How many trials a study runs at once: ``--concurrency``, else as many as ``cpus`` allow."""
    return a.concurrency or max(1, int(cpus // a.cpus_per_trial))


def _local_resources(a: SweepArgs) -> dict:
    """What the local Ray this study starts will have: Ray's own CPU count (it honours cgroup
    limits), the GPUs torch sees (asked only when a trial wants one); a Ray already started in
    this process (tests, notebooks) is asked itself."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    try:
        from ray._private.utils import get_num_cpus  # private: os.cpu_count() where it moved
        cpus = float(get_num_cpus())
    except (ImportError, AttributeError):
        cpus = float(os.cpu_count() or 1)
    gpus = 0.0
    if a.gpus_per_trial > 0:
        import torch

        gpus = float(torch.cuda.device_count())
    return {"CPU": cpus, "GPU": gpus}


def _check_address(address: str | None) -> None:
    """An unreachable --address is one clear error in seconds (Ray itself warns forever)."""
    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT of a Ray head (ray start --head --port ...)")
    import socket

    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise UserError(f"--address {address}: no Ray head answers there ({e.strerror or e})") from None


def rank_trials(rows: list[dict], mode: str, finished: dict[str, int]) -> list[dict]:
    """A study's complete, feasible trials, best first; ties go to the trial that finished first
    (``finished``: trial id -> its [k/N] index), as ``bnnsearch best`` ranks them."""
    sign = -1 if mode == "max" else 1
    return sorted([r for r in rows if r["status"] == "complete" and r["feasible"]],
                  key=lambda r: (sign * r["objective"], finished.get(r["trial"], math.inf)))


def _interrupted(tracker, parent_id: str, a: SweepArgs, name: str) -> Interrupted:
    """Mark an unfinished study interrupted (parent and unfinished trials KILLED, no best config)."""
    done = len(tracker.steps(parent_id, "trial_state"))
    for r in tracker.child_runs(parent_id):
        if r.info.status == "RUNNING" and MlflowCallback.INDEX in r.data.tags:  # finished, not yet marked ended
            tracker.finish(r.info.run_id, run_status(r.data.tags))
        elif r.info.status == "RUNNING":
            tracker.set_tags(r.info.run_id, {"bnnsearch.status": "interrupted"})
            tracker.finish(r.info.run_id, "KILLED")
    tracker.set_tags(parent_id, {"bnnsearch.status": "interrupted", "n_finished_trials": done})
    tracker.finish(parent_id, "KILLED")
    return Interrupted(f"study {name!r} interrupted: {done} of {a.trials or '?'} trials finished; nothing recorded is "
                       "lost, and the study is marked interrupted (no best config)", name)



def run_sweep(a: SweepArgs, ready: Callable[[], None] | None = None) -> dict:
    """Run (or resume) one study; returns a summary with the top trials. ``ready()`` is called
    once every flag, the store, the storage folder and the data have been checked and before Ray
    starts: the CLI prints the study's header there, so a mistake is the only line printed."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")
    # Ray's experiment snapshot names each trial's latest checkpoint, and Ray deletes checkpoints
    # beyond num_to_keep as new ones arrive: a snapshot older than the deletion made a killed
    # study's resume fail that trial ("checkpoint does not exist on storage anymore", seen in a
    # fresh-clone run). Snapshot on every loop step (a small file) and keep two checkpoints.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    quiet_temp_file_race()

    from .tracking import check_store

    check_args(a)
    _check_address(a.address)
    space, name = a.space, a.study_name()
    from .engine import build

    # The flags' own checks come before any work: loading the data may write its cache under
    # data_root, and a mistyped flag must leave nothing behind.
    storage = Path(a.storage).expanduser().resolve()
    check_out_dir(storage, f"--storage {a.storage}")
    check_store(a.tracking_uri)
    with _claim_study(storage, name):  # held until this study ends: one driver per study
        # The dataset is there and the fixed config builds (the driver builds each trial's model
        # for its cost table anyway): a missing data file is one clear error before any run,
        # directory or Ray instance exists, not a study whose every trial fails.
        try:
            build(space.config(space.low_point(), where=space.path), "cpu")
        except UserError as e:
            raise named(space.path, e) from None
        return _start_study(a, space, name, storage, storage / name, ready)


@contextlib.contextmanager
def _claim_study(storage: Path, name: str):
    """One driver per study: two commands given the same study name at once (the same command
    in two terminals) both passed the "already exists" check before either had recorded
    anything, then shared one Ray results folder and one study name in MLflow (20 trials from
    two samplers under one study). The check and everything after it now run under an exclusive
    ``flock`` on a file keyed by the resolved storage folder and the name, in the system's temp
    folder (the storage folder may not exist yet, and a mistake must leave nothing there);
    the operating system releases it when the driver exits, even on SIGKILL. Covers drivers on
    one machine, not two machines sharing a storage folder."""
    import hashlib

    key = hashlib.sha256(f"{storage}\0{name}".encode()).hexdigest()[:32]
    uid = os.getuid() if hasattr(os, "getuid") else "any"  # not POSIX: flocked holds no lock anyway
    locks = Path(tempfile.gettempdir()) / f"bnnsearch-studies-{uid}"  # per user: another's is not writable
    locks.mkdir(mode=0o700, exist_ok=True)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(flocked(locks / f"{key}.lock", wait=False))
        except BlockingIOError:
            raise UserError(f"study {name!r} is running in another process on this machine (storage {storage}); "
                            f"wait for it to end, or give --name to start another") from None
        yield


def _start_study(a: SweepArgs, space, name: str, storage: Path, exp_dir: Path,
                 ready: Callable[[], None] | None) -> dict:
    """``run_sweep`` once the study is claimed: the "already exists" check, Ray, the record."""
    import ray

    from .tracking import Tracker, git_sha

    tracker = Tracker(a.tracking_uri, a.experiment_name())
    parent = tracker.find_study(name)
    if a.resume:
        if parent is None:  # a study interrupted before Ray started has no exp_dir yet: it starts afresh
            raise UserError(f"--resume: no study {name!r} to resume (looked in {exp_dir} and experiment "
                            f"{a.experiment_name()!r} of {tracker.uri})")
        changed = recorded_differences(parent, a)
        if changed:  # Ray would restore the old sampler and count the new budget: a study of neither
            raise UserError(f"--resume: study {name!r} was run with {'; '.join(changed)}; resume it with the same "
                            f"flags and space, or give --name to start another")
    elif parent is not None or exp_dir.exists():
        raise UserError(f"study {name!r} already exists ({exp_dir}); add --resume to continue it or --name to start another")
    if ready is not None:
        ready()

    if not ray.is_initialized():
        kw = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        # "local": always a fresh local instance, never a stale cluster recorded in /tmp/ray
        try:
            ray.init(address=a.address or "local", **kw)
        except ConnectionError as e:  # a wrong --address (or a cluster that is down): nothing recorded yet
            raise UserError(f"--address {a.address}: no Ray cluster answers there ({e}); start one with  "
                            f"ray start --head  or leave --address out to run locally") from None
    _check_resources(a, ray.cluster_resources())
    interrupts.check()  # before anything is recorded
    try:  # the last check before the record: Ray would fail on it after the study's parent run exists
        storage.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--storage {a.storage}: cannot create the directory ({e.strerror})") from None

    if a.resume:
        parent_id = parent.info.run_id
        tracker.reopen(parent_id)
        tracker.set_tags(parent_id, {"bnnsearch.status": "running"})
    else:
        parent_id = tracker.start_study(
            name, run_name=a.label or f"{space.arm} {a.sampler} s{a.seed}",
            tags={"method": space.method, **({"space_name": space.name} if space.name else {}), "sampler": a.sampler,
                  "seed": a.seed, "space_file": space.path, "space_sha256": space.sha256, SPACE_KEY: space.key(),
                  "git_sha": git_sha(), "scheduler": a.scheduler},
            params={"trials": a.trials, "sampler": a.sampler, "seed": a.seed, "startup_trials": a.startup_trials,
                    "metric": space.metric, "mode": space.mode, "space": space.path, "pack": a.pack_size(),
                    **({"objectives": json.dumps(space.objectives)} if space.multi else {}),
                    **({"constraints": json.dumps(space.constraints)} if space.constraints else {}),
                    **({"time_budget_s": a.time_budget_s} if a.time_budget_s else {}),
                    **({"warm_start": a.warm_start} if a.warm_start else {})},
        )
        tracker.log_text(parent_id, Path(space.path).read_text(), "space.yaml")

    try:  # from here on the parent run exists: it ends FINISHED, interrupted (KILLED) or FAILED
        return _run_study(a, space, name, tracker, parent_id, exp_dir, storage)
    except KeyboardInterrupt:  # outside Tune's own handler (set-up, or TUNE_DISABLE_SIGINT_HANDLER=1)
        raise _interrupted(tracker, parent_id, a, name) from None
    except Interrupted:
        raise
    except BaseException as e:
        tracker.set_tags(parent_id, {"bnnsearch.status": "failed", "error": f"{type(e).__name__}: {e}"[:4000]})
        tracker.finish(parent_id, "FAILED")
        raise



def _check_pack(a: SweepArgs, space, pack: int) -> int:
    """Whether this study's configurations can be packed; the pack size to use (1 with a
    one-line notice when they cannot: never silently)."""
    from .engine import build, build_model
    from .nn.pack import NotPackable

    reason = None
    cfg = space.config(space.low_point(), where=space.path)
    if cfg.freeze_binary:
        reason = "freeze_binary (a control) trains alone"
    else:
        try:
            data, method, hp, model = build(cfg, "cpu")
            method.pack_model([model, build_model(cfg, data, method, hp, "cpu")])  # the data loaded once
        except NotPackable as e:
            reason = str(e)
    if reason is not None:
        if not a.quiet:
            print(f"notice: --pack {pack}: {space.method} on arch {cfg.arch} cannot be "
                  f"packed ({reason}); trials run one per Ray trial", flush=True)
        return 1
    shared = [p.name for p in space.params if space.structural(p)]
    if shared and not a.quiet:
        print(f"notice: --pack {pack}: sampled once per pack, shared by its members (they change the network, the "
              f"data or the schedule): {', '.join(shared)}", flush=True)
    return pack


def _member_asha(a: SweepArgs, space, name: str, tracker, parent_id: str, epochs: int) -> str:
    """Start the study's member-level ASHA actor; after a resume it is refilled from the
    members' recorded objectives. Returns its Ray actor name."""
    import uuid

    from .asha import rungs_actor

    histories = {}
    if a.resume:
        for r in tracker.child_runs(parent_id):
            tid = r.data.tags.get(TRIAL_TAG)
            if tid and r.data.tags.get("bnnsearch.pack"):
                histories[tid] = tracker.steps(r.info.run_id, "objective")
    actor_name = f"bnnsearch-asha-{name}-{uuid.uuid4().hex[:8]}"
    _member_asha.actor = rungs_actor(actor_name, epochs, space.mode, histories)  # held: the actor lives with it
    return actor_name


def _run_study(a: SweepArgs, space, name: str, tracker, parent_id: str, exp_dir: Path, storage: Path) -> dict:
    import ray
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from .config import dump

    import warnings

    # Ray warns when the define-by-run space takes over 1 s; ours only suggests, and the time is
    # the sampler's own model fitting (the bandit's per-method GP asks inside it).
    warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space` argument took")
    # A trial resumed from its checkpoint re-runs (deterministically) the epochs after it and
    # reports them again; Optuna keeps the first report of a step and warns about the second.
    warnings.filterwarnings("ignore", message="The reported value is ignored because this `step=")
    epochs = space.config(space.low_point(), where=space.path).epochs  # fixed: epochs cannot be searched
    pack = a.pack_size()
    if pack > 1:
        pack = _check_pack(a, space, pack)
    asha = None
    if pack > 1 and a.scheduler == "asha":  # Ray's ASHA would stop whole packs: members are judged one by one
        asha = _member_asha(a, space, name, tracker, parent_id, epochs)
    # Ray's own ASHA (unpacked trials) decides on every reported result: one report per epoch
    report_s = 0.0 if a.scheduler == "asha" and asha is None else REPORT_S
    train_fn = tune.with_resources(tune.with_parameters(trainable, space=space, cpus=a.cpus_per_trial,
                                                        checkpoint_s=a.checkpoint_s, asha=asha, report_s=report_s),
                                   {"cpu": a.cpus_per_trial, "gpu": a.gpus_per_trial})
    callback = MlflowCallback(a, parent_id, tracker.uri, tracker, str(exp_dir))
    t0 = time.time()
    if a.resume:
        repair_tuner_pkl(exp_dir)
        repair_snapshot(exp_dir)
    if a.resume and tune.Tuner.can_restore(str(exp_dir)):
        tuner = tune.Tuner.restore(str(exp_dir), trainable=train_fn, resume_unfinished=True, resume_errored=True)
    else:
        if space.conditional and a.sampler in ("gp", "botorch", "nsga2") and not a.quiet:
            always = [p.name for p in space.params if not p.when]
            cond = [p.name for p in space.params if p.when]
            print(f"warning: --sampler {a.sampler} models only the parameters every trial samples "
                  f"({', '.join(always)}); the conditional ones ({', '.join(cond[:8])}"
                  f"{f' and {len(cond) - 8} more' if len(cond) > 8 else ''}) are sampled at random (optuna#6164). "
                  f"--sampler tpe models them.", flush=True)
        exp_dir.mkdir(parents=True, exist_ok=True)
        keys = objective_keys(space)
        searcher = searcher_cls()(
            space=space.sampler_space(), metric=keys if space.multi else keys[0],
            mode=[mode for _, mode in space.objectives] if space.multi else space.mode,
            sampler=make_sampler(a.sampler, a.seed, a.startup_trials, space.conditional, batch=pack > 1,
                                 objectives=len(space.objectives), methods=getattr(space, "methods", None)),
            points_to_evaluate=[*a.points, *([p] if a.seed_defaults and (p := space.default_point()) else [])] or None,
            full_epochs=epochs, journal=str(exp_dir / JOURNAL), seed=None,
            pack=pack, total=a.trials, structural=tuple(p.name for p in space.params if space.structural(p)),
            log_keys=tuple(k for k, lg in zip(keys, space.log_axes) if lg))
        scheduler = (ASHAScheduler(time_attr="training_iteration", metric="objective", mode=space.mode, max_t=epochs,
                                   grace_period=1, reduction_factor=3)
                     if a.scheduler == "asha" and asha is None else FIFOScheduler())
        concurrency = trials_at_once(a, ray.cluster_resources().get("CPU", 1))
        tuner = tune.Tuner(
            train_fn,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=-(-a.trials // pack) if a.trials else -1,
                                        time_budget_s=a.time_budget_s or None,
                                        max_concurrent_trials=concurrency, reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), callbacks=[callback], verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=a.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
        )
    backup_tuner_pkl(exp_dir)
    interrupts.check()  # a Ctrl-C a library swallowed during set-up
    with interrupts.tune_loop(f"study {name!r}"):  # counts a Ctrl-C Ray Tune took as pending
        grid = tuner.fit()  # Ray Tune takes the first Ctrl-C: it stops the trials and saves the experiment
    # From here the study's record is written whole: a Ctrl-C that lands while it is written (a
    # fast study can end just before one) is remembered, the study is recorded either interrupted
    # (the check below) or finished, never both, and the command stops at its next step.
    with interrupts.held():
        # A Ctrl-C is an interrupt even when it lands after the last trial finished (a comparison
        # must not go on to its next study); an incomplete record is one whatever the cause.
        # A time budget ends a study before its trial count (not an interrupt); Ray stops the trials
        # still running then without a completion callback: they are recorded here, stopped early.
        if a.time_budget_s and not interrupts.pending():
            MlflowCallback(a, parent_id, tracker.uri, tracker, str(exp_dir)).close_budget_stops()
        short = len(tracker.steps(parent_id, "trial_state")) < a.trials and not a.time_budget_s
        if interrupts.pending() or short:
            raise _interrupted(tracker, parent_id, a, name)
        sampler_states = {}
        study = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
        searcher = getattr(study, "search_alg", None) if study else None
        ot = getattr(searcher, "_ot_study", None)
        if ot is not None:  # what the sampler was told, by state (fresh studies; a restored one rebuilds it)
            for t in ot.trials:
                sampler_states[t.state.name] = sampler_states.get(t.state.name, 0) + 1

        children = tracker.child_runs(parent_id)
        runs = {c.data.tags.get(TRIAL_TAG): c.info.run_id for c in children}
        # ties are ranked by when a trial finished ([k/N]), as `bnnsearch best` ranks them
        finished = {c.data.tags.get(TRIAL_TAG): int(c.data.tags[MlflowCallback.INDEX]) for c in children
                    if MlflowCallback.INDEX in c.data.tags}
        rows = []
        for r in grid:
            last = r.metrics or {}
            for mid, params, k in members_of(last.get("trial_id", ""), r.config or {}):
                m = trial_metrics(last) if k is None else (member_results(last) or {}).get(str(k), {})
                full = int(m.get("epoch", 0)) >= space.config(params, where="sampled config").epochs
                status = ("failed" if r.error and not m.get("ended") else
                          "diverged" if m.get("diverged") else ("complete" if full else "stopped early"))
                rows.append({"trial": mid, "status": status, "objective": m.get("objective"),
                             "objectives": [m.get(k) for k in objective_keys(space)], "feasible": feasible(m),
                             "epochs": m.get("epoch", 0), "config": params, "path": r.path, "run_id": runs.get(mid)})
        ranked = rank_trials(rows, space.mode, finished)
        summary = {"study": name, "experiment": a.experiment_name(), "tracking_uri": tracker.uri, "parent_run_id": parent_id,
                   "storage": str(exp_dir), "metric": space.metric, "mode": space.mode, "trials": rows, "top": ranked,
                   "seconds": time.time() - t0}
        if ranked:
            best_cfg = trial_config(space, ranked[0]["config"], a.cpus_per_trial)
            tracker.log_text(parent_id, dump(best_cfg), "best_config.yaml")
            tracker.set_tags(parent_id, {"best_value": ranked[0]["objective"], "best_trial": ranked[0]["trial"]})
            tracker.log_metrics(parent_id, {"best_value": ranked[0]["objective"]}, step=max(a.trials, len(rows)))
        counts = {s: sum(r["status"] == s for r in rows) for s in ("complete", "stopped early", "diverged", "failed")}
        # n_finished_trials: an interrupt set it; the finished study says its own (not a stale count)
        tracker.set_tags(parent_id, {**{f"n_{k.replace(' ', '_')}": v for k, v in counts.items()},
                                     "n_finished_trials": sum(counts.values()), "bnnsearch.status": "finished"})
        tracker.finish(parent_id)
        summary["counts"] = counts
        summary["sampler_states"] = sampler_states
        return summary

