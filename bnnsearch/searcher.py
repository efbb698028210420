"""The sampler side of a study: Optuna's samplers (and the method hierarchy's, ``hierarchy.py``)
behind Ray Tune's ``OptunaSearch``, which bnnsearch's searcher extends to tell trials stopped
before their full budget as PRUNED, to ask the sampler K times per packed Ray trial, and to
journal every suggestion, so that a study killed and resumed loses or repeats no trial."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import UserError
from .raystate import snapshot_files
from .results import PACK_KEY, earlier_results, member_id, member_results

SAMPLERS = ("random", "tpe", "tpe-flat", "tpe-cover", "gp", "botorch", "nsga2", "bandit")


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


def searcher_cls():
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
    snap = snapshot_files(exp_dir)
    if not snap:
        return set()
    try:
        data = json.loads(snap[0].read_text())
        return {json.loads(t[0]).get("trial_id") for t in data.get("trial_data", [])} - {None}
    except (OSError, ValueError, TypeError, IndexError):
        return set()

