"""Studies: Ray Tune drives one common trainable (``engine.fit``), an Optuna or BoTorch sampler
proposes configs, MLflow records them. The only module that imports ray.

* One study per method (one search-space file); a fresh ``OptunaSearch`` and sampler per study.
  ``random``, ``tpe``, ``gp`` (Optuna's GPSampler) and ``botorch`` (optuna-integration's
  BoTorchSampler) all get the same number of startup (random) trials unless told otherwise.
* The paper defaults are the first trial when they lie inside the space (``points_to_evaluate``).
* Trials report their epochs through ``ray.tune.report`` (held back and sent together at most
  every ``REPORT_S`` seconds, see ``_Sender``), handing Ray a checkpoint of the engine's state
  at most every ``checkpoint_s`` seconds, so a resumed study continues an
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
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from .cost import STATIC_COST
from . import interrupts
from .errors import Interrupted, UserError, named
from .runio import check_out_dir, copy_whole, flocked
from .tracking import TRIAL_TAG
from .spaces import SearchSpace

SAMPLERS = ("random", "tpe", "tpe-flat", "tpe-cover", "gp", "botorch", "nsga2", "bandit")
SCHEDULERS = ("fifo", "asha")
BIG = 1e30  # finite stand-in for inf in reports (samplers, JSON and MLflow refuse non-finite values)
PACK_KEY = "bnnsearch_pack"  # a packed Ray trial's config: {PACK_KEY: [member params, ...]}
CKPT_FLAG = "bnnsearch_checkpointed"  # in a result that carries a Ray checkpoint
FLUSH_S = 3.0  # the driver writes a trial's buffered epoch metrics to MLflow at least this often
REPORT_S = 2.0  # a trial reports to Ray at least this often (and at its end, and with each checkpoint)
EARLIER = "earlier"  # in a result: the trial's results held back since its last report (a JSON list)


def member_id(trial_id: str, k: int) -> str:
    """The id of member k of a packed Ray trial: its MLflow run's trial tag, its Optuna trial."""
    return f"{trial_id}#{k}"


def member_results(result: dict | None) -> dict[str, dict] | None:
    """A packed trial's per-member metrics, ``{"0": {...}, ...}``; None for an unpacked trial.

    A packed trial reports them as one JSON string (``members``): Ray keeps running statistics
    of every numeric key of a result (max, min, means over the last 5 and 10) and re-encodes
    them into its experiment snapshot on every result, in pure-Python JSON; 8 members' ~30
    metrics as numbers made that ~210 kB and ~18 ms per report (measured), as a string ~11 kB
    and 0.4 ms. Results of studies recorded before (a nested dict, or flattened with "/" in
    what searchers get) are still read."""
    if not result:
        return None
    ms = result.get("members")
    if isinstance(ms, str):
        return json.loads(ms)
    if isinstance(ms, dict):
        return ms
    out: dict[str, dict] = {}
    for key, v in result.items():
        if key.startswith("members/"):
            k, _, name = key[8:].partition("/")
            out.setdefault(k, {})[name] = v
    return out or None


def trial_metrics(result: dict | None) -> dict:
    """An unpacked trial's result with its metrics merged in. A trial reports to Ray only what
    Ray and the searcher read as numbers (epoch, diverged, objective and constraint values) and
    the rest as one JSON string under ``metrics``: Ray keeps running statistics of every
    numeric key and re-encodes them into its experiment snapshot on every result (the cost
    ``member_results`` describes for packs). Results recorded before (every metric a key) are
    returned as they are."""
    if not result:
        return {}
    ms = result.get("metrics")
    if isinstance(ms, str):
        return {**json.loads(ms), **{k: v for k, v in result.items() if k not in ("metrics", EARLIER)}}
    return result


def earlier_results(result: dict | None) -> list[dict]:
    """The results a trial held back since its previous report, oldest first (see _Sender);
    each reads like a result (``trial_metrics``, ``member_results``)."""
    held = (result or {}).get(EARLIER)
    return json.loads(held) if isinstance(held, str) else []


def members_of(trial_id: str, config: dict) -> list[tuple[str, dict, int | None]]:
    """(member id, params, index in the pack or None) of every configuration a Ray trial trains."""
    pack = config.get(PACK_KEY)
    if pack is None:
        return [(trial_id, config, None)]
    return [(member_id(trial_id, k), c, k) for k, c in enumerate(pack)]


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


def _quiet_gp_search() -> None:
    """Silence two messages of Optuna's GP acquisition search that say nothing wrong: once the
    acquisition is flat away from its best point (a study whose trials tie, common with
    accuracies on small validation sets), ``optim_mixed`` divides by a zero sum (a numpy
    RuntimeWarning; the NaNs it makes are then counted as no start points) and logs "Study
    already converged, so the number of local search is reduced". An automl study printed 66 of
    them per 1,000 trials. Other warnings of Optuna are left as they are."""
    import logging
    import warnings

    logging.getLogger("optuna._gp.optim_mixed").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="invalid value encountered in divide", category=RuntimeWarning,
                            module=r"optuna\._gp\.optim_mixed")


def make_sampler(name: str, seed: int, n_startup: int, conditional: bool = False, batch: bool = False,
                 objectives: int = 1, methods: list[str] | None = None):
    """An Optuna sampler. For a conditional space TPE models the parameters jointly where they
    co-occur (``multivariate`` + ``group``); GP, BoTorch and NSGA-II model only parameters
    present in every trial and sample the rest at random (optuna#6164): ``run_sweep`` says so.
    With several objectives: TPE is MOTPE, GP uses log-EHVI, BoTorch qLogNEHVI (noisy
    accuracies), NSGA-II its population of ``n_startup`` (at least 4) per generation. Hard
    constraints reach every one of them as ``trial.set_constraint`` values."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe-flat":  # independent TPE: one univariate model per parameter (the baseline to --sampler tpe)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=False)
    if name == "tpe":
        if conditional:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True, group=True)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup)
    if name in ("gp", "bandit"):
        _quiet_gp_search()
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup, warn_independent_sampling=False)
    if name == "bandit":  # AutoML spaces: UCB over methods, a GP per method beneath (bnnsearch/hierarchy.py)
        from .hierarchy import MethodBandit

        return MethodBandit(methods or [], seed=seed, n_startup=max(1, n_startup // max(1, len(methods or [1]))))
    if name == "tpe-cover":  # AutoML spaces: grouped TPE whose random start covers every method
        from .hierarchy import CoveringTPE

        return CoveringTPE(methods or [], seed=seed, n_startup=n_startup)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, n_startup))
    if name == "botorch":
        # Optuna marks the BoTorch sampler and its acquisition functions experimental (an
        # interface that may change; the README says so): a warning when it is built and one
        # per proposal, in every study, told nothing a user can act on. Only these are silenced,
        # and BoTorch's GPyTorch stack calling torch.jit.script, which this torch deprecates
        # (a FutureWarning when it is imported).
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning,
                                module=r"optuna_integration\.botorch")
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        from optuna_integration import BoTorchSampler

        kw = {}
        if objectives > 1:  # qLogNEHVI in this optuna-integration (qLog variant when botorch has it)
            from optuna_integration.botorch import qnehvi_candidates_func

            kw["candidates_func"] = qnehvi_candidates_func
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # A pack asks K times before any answer: with running trials considered, the K asks are
            # one batch (pending points) instead of K near-copies of one proposal.
            return BoTorchSampler(seed=seed, n_startup_trials=n_startup, consider_running_trials=batch, **kw)
    raise UserError(f"--sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def worst_value(space: SearchSpace, metric: str | None = None, mode: str | None = None) -> float:
    metric, mode = metric or space.metric, mode or space.mode
    if mode == "max":
        return 0.0 if metric.endswith("/acc") else -BIG
    return BIG


def objective_of(m: dict, space: SearchSpace, metric: str | None = None, mode: str | None = None) -> float:
    v = m.get(metric or space.metric)
    if m.get("diverged") or v is None or not math.isfinite(v):
        return worst_value(space, metric, mode)
    return float(v)


def objective_keys(space: SearchSpace) -> list[str]:
    """The result keys the sampler is told: ``objective``, then ``objective_1``, ... ."""
    return ["objective"] + [f"objective_{i}" for i in range(1, len(space.objectives))]


def objective_fields(m: dict, space: SearchSpace) -> dict:
    """What a trial reports beside its metrics: each objective's value (worst-case when
    diverged: never on a front) and, for constrained studies, Optuna constraint values."""
    out = {k: objective_of(m, space, metric, mode) for k, (metric, mode) in zip(objective_keys(space), space.objectives)}
    if space.constraints:
        from .automl import constraint_values

        out.update({f"constraint/{k}": v for k, v in constraint_values(m, space).items()})
    return out


def feasible(m: dict) -> bool:
    return all(v <= 0 for k, v in m.items() if k.startswith("constraint/"))


def sanitize(m: dict) -> dict:
    out = {}
    for k, v in m.items():
        if isinstance(v, float) and not math.isfinite(v):
            if math.isnan(v):
                continue
            v = math.copysign(BIG, v)
        out[k] = v
    return out


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


JOURNAL = "bnnsearch_suggestions.jsonl"


def read_journal(exp_dir: Path) -> list[dict]:
    path = Path(exp_dir) / JOURNAL
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            continue
    return out


def _searcher_cls():
    from ray.tune.search.optuna import OptunaSearch

    class BudgetAwareOptunaSearch(OptunaSearch):
        """Tells trials stopped before their full budget as PRUNED (Ray's OptunaSearch would
        tell them COMPLETE with their last, partial-budget value).

        Every suggestion is appended to a journal in the experiment folder before Ray sees it.
        A trial that the driver started after Ray's last experiment snapshot is unknown to a
        restored study; on restore, such trials are replayed in order — the same parameters
        enqueued to the sampler — so no started trial is lost or re-sampled, and the MLflow
        callback continues the trial's run (``replay_of`` in the journal).
        """

        def __init__(self, *a, full_epochs: int, journal: str, pack: int = 1, total: int = 0,
                     structural: tuple[str, ...] = (), log_keys: tuple[str, ...] = (), **k):
            super().__init__(*a, **k)
            self.full_epochs = full_epochs
            self.journal = journal
            self._replay: list[tuple[str, dict]] = []
            # Packed trials: each Ray trial asks the sampler for up to ``pack`` members (``total``
            # configurations in all); parameters in ``structural`` are sampled once per pack.
            self.pack, self.total, self.structural = pack, total, structural
            self._asked = 0
            self._reported: dict[str, int] = {}
            self._keys = list(self.metric) if isinstance(self.metric, list) else [self.metric]
            self._constrained: set[str] = set()
            self.log_keys = log_keys  # objectives the sampler is told in log10 (``log: true``)

        def _scaled(self, result: dict | None) -> dict | None:
            """A result as the sampler is told it: the ``log: true`` objectives in log10."""
            keys = getattr(self, "log_keys", ())  # absent from a searcher pickled before log axes existed
            if not result or not keys:
                return result
            from .automl import log_scaled

            return {**result, **dict(zip(keys, log_scaled([result[k] for k in keys], [True] * len(keys))))}

        def _constrain(self, mid: str, m: dict | None) -> None:
            """Hand a trial's constraint values to Optuna before its outcome (samplers read
            ``trial.constraints``: a trial over a limit is infeasible)."""
            if not m or mid not in self._ot_trials or mid in self._constrained:
                return
            self._constrained.add(mid)
            for k, v in m.items():
                if k.startswith("constraint/"):
                    self._ot_trials[mid].set_constraint(k[len("constraint/"):], v)

        def restore(self, checkpoint_path):
            journal = self.journal
            super().restore(checkpoint_path)
            self.journal = journal  # the folder may have moved; ours is the live one
            known = set(self._ot_trials)
            # Ray saves its trial list just before the searcher: a kill in between leaves trials
            # that Ray restores (and runs with their config) but the sampler never saw. Those are
            # re-registered with the sampler under their own id (their outcome is told), never
            # replayed as a new trial, which would train the same config twice.
            in_ray = _ray_trial_ids(Path(journal).parent)
            self._replay = []
            entries = read_journal(Path(journal).parent)
            # A trial replayed after an earlier kill lives on as its replay (same config, same
            # MLflow run), whose own entry decides: replaying the original again would train the
            # config twice.
            replayed = {e.get("replay_of") for e in entries} - {None}
            for e in entries:
                if e["trial_id"] in known or e["trial_id"] in replayed:
                    continue
                if e.get("pack", e["trial_id"]) in in_ray:
                    self._ot_study.enqueue_trial(e["params"])
                    OptunaSearch.suggest(self, e["trial_id"])
                    known.add(e["trial_id"])
                    self._asked += e.get("pack") is not None
                else:
                    self._replay.append((e["trial_id"], e["params"]))

        def _journal(self, entry: dict) -> None:
            with open(self.journal, "a") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())

        def suggest(self, trial_id):
            if self.pack > 1:
                return self._suggest_pack(trial_id)
            replay_of = None
            if trial_id not in self._ot_trials and self._replay:
                replay_of, params = self._replay.pop(0)
                self._ot_study.enqueue_trial(params)
            cfg = super().suggest(trial_id)
            if cfg is not None and trial_id in self._ot_trials:
                self._journal({"trial_id": trial_id, "params": self._ot_trials[trial_id].params, "replay_of": replay_of})
            return cfg

        def _suggest_pack(self, trial_id):
            """Ask the sampler once per member (K pending asks: TPE and random treat them as
            independent draws, GP/BoTorch condition on finished trials only — see README).
            Structural parameters take member 0's value (an enqueued partial trial); journal
            replays after a driver kill come first, one member each."""
            members, shared = [], None
            size = min(self.pack, self.total - self._asked) if self.total else self.pack
            for k in range(max(size, 0)):
                mid = member_id(trial_id, k)
                replay_of = None
                if mid not in self._ot_trials:
                    if self._replay:
                        replay_of, params = self._replay[0]
                        if shared is not None and any(params.get(n) != v for n, v in shared.items()):
                            break  # from another pack's structure: it leads the next pack
                        self._replay.pop(0)
                        self._ot_study.enqueue_trial(params)
                    elif shared:
                        self._ot_study.enqueue_trial(shared)
                    self._asked += 1
                cfg = OptunaSearch.suggest(self, mid)
                params = self._ot_trials[mid].params
                if shared is None:
                    shared = {n: params[n] for n in self.structural if n in params}
                self._journal({"trial_id": mid, "pack": trial_id, "params": params, "replay_of": replay_of})
                members.append(cfg)
            return {PACK_KEY: members} if members else None

        def _pack_members(self, trial_id):
            prefix = trial_id + "#"
            return [t for t in self._ot_trials if t.startswith(prefix)]

        def _tell(self, mid: str, m: dict | None, error: bool = False):
            if mid in self._completed_trials:
                return
            result = None
            if m and not error and (m.get("diverged") or m.get("epoch", 0) >= self.full_epochs):
                result = {k: m[k] for k in self._keys}
            if not error:
                self._constrain(mid, m)
            OptunaSearch.on_trial_complete(self, mid, self._scaled(result), error)

        def _intermediate(self, mid: str, m: dict) -> None:
            """Optuna's intermediate value of a trial at its epoch (single objective; an epoch
            a resumed trial re-runs is reported once)."""
            epoch = int(m.get("epoch", 0))
            if len(self._keys) == 1 and epoch > self._reported.get(mid, 0) and self._keys[0] in m:
                self._ot_trials[mid].report(m[self._keys[0]], epoch)
                self._reported[mid] = epoch

        def on_trial_result(self, trial_id, result):
            members = member_results(result)
            if members is None:  # every epoch of the report (held-back ones first), at its epoch
                if trial_id in self._ot_trials and trial_id not in self._completed_trials:
                    for r in [*earlier_results(result), result]:
                        self._intermediate(trial_id, r)
                return
            for r in earlier_results(result):
                for key, m in (member_results(r) or {}).items():
                    mid = member_id(trial_id, int(key))
                    if mid not in self._completed_trials and mid in self._ot_trials:
                        self._intermediate(mid, m)
            for key, m in members.items():
                mid = member_id(trial_id, int(key))
                if mid in self._completed_trials or mid not in self._ot_trials:
                    continue
                self._intermediate(mid, m)
                if m.get("ended"):
                    self._tell(mid, m)

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id not in self._ot_trials and self._pack_members(trial_id):
                members = member_results(result) or {}
                for mid in self._pack_members(trial_id):
                    self._tell(mid, members.get(mid.rsplit("#", 1)[1]), error)
                return
            if result and not error and not result.get("diverged") and result.get("epoch", 0) < self.full_epochs:
                result = None  # -> PRUNED: a partial-budget value is not a full-budget result
            if result and not error and trial_id not in self._completed_trials:
                self._constrain(trial_id, result)
            super().on_trial_complete(trial_id, self._scaled(result), error)

    return BudgetAwareOptunaSearch


def _ray_trial_ids(exp_dir: Path) -> set[str]:
    """Trial ids in Ray Tune's newest experiment snapshot (what Tuner.restore brings back)."""
    snap = _snapshot_files(exp_dir)
    if not snap:
        return set()
    try:
        data = json.loads(snap[0].read_text())
        return {json.loads(t[0]).get("trial_id") for t in data.get("trial_data", [])} - {None}
    except (OSError, ValueError, TypeError, IndexError):
        return set()


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
        """Ray does not copy its snapshot atomically: keep a whole copy (see _backup_snapshot)."""
        if self.exp_dir:
            self._state_seen = _backup_snapshot(Path(trial.local_experiment_path), Path(self.exp_dir),
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


class _TempFileRace:
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


def _quiet_temp_file_race() -> None:
    import logging

    log = logging.getLogger("ray.tune.execution.experiment_state")
    if not any(isinstance(f, _TempFileRace) for f in log.filters):
        log.addFilter(_TempFileRace())


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
    _quiet_temp_file_race()

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


_TUNER_PKL, _TUNER_BAK = "tuner.pkl", "bnnsearch_tuner.pkl"


def _backup_tuner_pkl(exp_dir: Path) -> None:
    """Keep a copy of Ray's tuner.pkl once it is whole: Ray rewrites it in place (truncate, then
    write) and a SIGKILL in between left it empty, so the study could not be resumed (seen in a
    fresh-clone run of the two-SIGKILL test: EOFError in Tuner.restore)."""
    src = Path(exp_dir) / _TUNER_PKL
    if src.exists() and src.stat().st_size > 0:
        copy_whole(src, Path(exp_dir) / _TUNER_BAK)


def _repair_tuner_pkl(exp_dir: Path) -> None:
    """Before a resume: an empty or missing tuner.pkl is restored from the copy (its content —
    trainable, configs — is the same in every run of the study)."""
    src, bak = Path(exp_dir) / _TUNER_PKL, Path(exp_dir) / _TUNER_BAK
    if bak.exists() and (not src.exists() or src.stat().st_size == 0):
        copy_whole(bak, src)


_STATE_BAK = "bnnsearch_state"  # the last whole set of Ray's snapshot files (one session's)
_STATE_FILES = ("experiment_state-{}.json", "search_gen_state-{}.json", "searcher-state-{}.pkl")


def _snapshot_files(folder: Path) -> list[Path]:
    """Ray's newest snapshot set in a folder: experiment_state-<session>.json with the greatest
    name (the one Tuner.restore reads) and the searcher files of the same session."""
    states = sorted(Path(folder).glob("experiment_state-*.json"), key=lambda p: p.name)
    if not states:
        return []
    session = states[-1].name[len("experiment_state-"):-len(".json")]
    return [f for t in _STATE_FILES if (f := Path(folder) / t.format(session)).exists()]


def _session(folder: Path) -> str:
    """The session name of the newest snapshot set in a folder ('' when there is none)."""
    files = _snapshot_files(folder)
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


def _backup_snapshot(staging: Path, exp_dir: Path, seen: tuple | None) -> tuple | None:
    """Keep a whole, consistent copy of Ray's snapshot set. Ray writes it into the driver's
    staging folder and copies that into the experiment folder in a background thread, file by
    file and in place: a SIGKILL during the copy leaves a file cut short (Tuner.restore then
    logs a JSONDecodeError and resumes with no trials) or a searcher newer than the trial list
    (the resumed study then believes every trial was started and runs none), and a kill before
    the copy leaves the folder's set behind staging's. Called from the driver's callback (a
    trial's completion, a result that carries a checkpoint), i.e. between two of Ray's
    synchronous writes to staging, so staging holds one consistent set; copied when it changed
    since ``seen``. Returns what was seen."""
    files = _snapshot_files(staging)
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


def _repair_snapshot(exp_dir: Path) -> bool:
    """Before a resume: Ray's newest snapshot set is replaced by the last whole copy (see
    _backup_snapshot) when it is not consistent (a file cut short, or a searcher newer than the
    trial list) or when the copy got further (Ray's background copy into the experiment folder
    lagged behind the kill, so its set misses a checkpoint the copy names). Trials recorded
    after the set used are replayed and reconciled as after any kill. An inconsistent set with
    no copy is removed (Ray then reads the previous session's set, if any). True if repaired."""
    exp_dir = Path(exp_dir)
    newest = _snapshot_files(exp_dir)
    if not newest:
        return False
    at = _progress(newest)
    bak, got = None, None
    for b in (exp_dir / _STATE_BAK, exp_dir / (_STATE_BAK + ".old")):
        files = _snapshot_files(b) if b.is_dir() else []
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
        _repair_tuner_pkl(exp_dir)
        _repair_snapshot(exp_dir)
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
        searcher = _searcher_cls()(
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
    _backup_tuner_pkl(exp_dir)
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
