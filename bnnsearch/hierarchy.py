"""``--sampler bandit``: a bandit over methods on top, one Gaussian-process sampler per method
beneath — the hierarchy of an AutoML space modelled so that every method's own parameters are
modelled (Optuna's GPSampler alone models only the parameters every trial has and draws the
methods' own at random, optuna#6164).

bnnsearch's rule [RECON: the issue names "a bandit over methods on top, one sampler per method
beneath"; the scores below are this project's choice, kept in one function]:

* Top: until every method is *judged* — it has a feasible finished trial or a running one, or
  ``COVER_TRIES`` trials all told — the least-tried method not yet judged (ties at random). A
  method is not judged by one infeasible trial: in an AutoML space the shared parameters (the
  widths) are drawn at random in a method's start-up, and a width over a memory limit says nothing
  about the method (docs/results/automl-cost: with one try, a method whose one trial drew an
  infeasible width scored 0 and UCB never came back to it — in 4 of 20 studies all five gradient
  methods were shut out this way; docs/results/automl-cover: with this rule none was, and the
  bandit still did not beat flat TPE — the covering spends the early trials). Then UCB:
  ``score(m) = best(m) + c * sqrt(ln N / n(m))`` with ``n(m)`` the trials of m (running ones
  included, so parallel asks spread), N all trials, c = 0.5. ``best(m)`` is the best reward of m's
  feasible full-budget trials in [0, 1]: one objective, its value min-max scaled over all such
  trials of the study; several, ``1 / (1 + the number of trials that dominate it)`` (1 on
  the front). A method with none scores 0 + its bonus.
* Beneath: each method has its own ``GPSampler`` that sees only that method's trials (a view of
  the study), so it models the method's own parameters and the shared ones (the method itself is
  left out of its model: it is constant there). Its first ``n_startup`` trials per method are
  random (the GP's own start-up).
"""
from __future__ import annotations

import math
import random

from optuna.samplers import BaseSampler, TPESampler

from .spaces import _encode

METHOD = "method"
UCB_C = 0.5
COVER_TRIES = 3  # trials a method gets to produce a feasible one before UCB judges it


class _MethodView:
    """A study seen through one method: only the trials whose ``method`` is ``m``."""

    def __init__(self, study, method: str):
        self._study, self._method = study, method

    def __getattr__(self, name):
        return getattr(self._study, name)

    def _keep(self, trials):
        return [t for t in trials if t.params.get(METHOD) == self._method]

    def _get_trials(self, deepcopy: bool = True, states=None, use_cache: bool = False):
        return self._keep(self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache))

    def get_trials(self, deepcopy: bool = True, states=None):
        return self._keep(self._study.get_trials(deepcopy=deepcopy, states=states))

    @property
    def trials(self):
        return self.get_trials()


def _tried(study, choices) -> tuple[list, dict[str, int]]:
    """The study's started trials (finished or running) and how many of them chose each method."""
    from optuna.trial import TrialState

    trials = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING,
                                                       TrialState.PRUNED, TrialState.FAIL), use_cache=False)
    count = {m: 0 for m in choices}
    for t in trials:
        if t.params.get(METHOD) in count:
            count[t.params[METHOD]] += 1
    return trials, count


def _least_tried(count: dict[str, int], rng: random.Random) -> str:
    least = min(count.values())
    return rng.choice([m for m, n in count.items() if n == least])


def rewards(trials, directions) -> list[float]:
    """Per finished feasible trial, its reward in [0, 1] (see the module docstring)."""
    from optuna.study import StudyDirection

    from .automl import dominates

    objectives = [("", "max" if d == StudyDirection.MAXIMIZE else "min") for d in directions]
    vals = [list(t.values) for t in trials]
    if len(objectives) == 1:
        sign = 1.0 if objectives[0][1] == "max" else -1.0
        lo, hi = min(sign * v[0] for v in vals), max(sign * v[0] for v in vals)
        return [1.0 if hi == lo else (sign * v[0] - lo) / (hi - lo) for v in vals]
    return [1.0 / (1.0 + sum(dominates(w, v, objectives) for w in vals)) for v in vals]


class MethodBandit(BaseSampler):
    """An Optuna sampler for AutoML spaces; see the module docstring."""

    def __init__(self, methods: list[str], seed: int = 0, n_startup: int = 2):
        import optuna

        self.methods = list(methods)
        self._rng = random.Random(seed)
        self._inner = {m: optuna.samplers.GPSampler(seed=seed + 17 * i, n_startup_trials=n_startup,
                                                    warn_independent_sampling=False)
                       for i, m in enumerate(self.methods)}
        self._fallback = optuna.samplers.RandomSampler(seed=seed + 1)
        self._relative: dict[int, dict] = {}  # trial number -> the method model's joint proposal

    # Optuna's sampler protocol ---------------------------------------------------------
    def infer_relative_search_space(self, study, trial):
        return {}  # the method is not known before the trial samples it: everything is lazy

    def sample_relative(self, study, trial, search_space):
        return {}

    def before_trial(self, study, trial):
        pass

    def after_trial(self, study, trial, state, values):
        self._relative.pop(trial.number, None)

    def reseed_rng(self):
        self._rng.seed()
        for s in self._inner.values():
            s.reseed_rng()

    def sample_independent(self, study, trial, name, dist):
        if name == METHOD:
            return _encode(self.choose(study, dist))
        m = trial.params.get(METHOD)
        if m not in self._inner:
            return self._fallback.sample_independent(study, trial, name, dist)
        view = _MethodView(study, m)
        inner = self._inner[m]
        if trial.number not in self._relative:
            space = dict(inner.infer_relative_search_space(view, trial))
            space.pop(METHOD, None)  # constant for this method: not a dimension of its model
            self._relative[trial.number] = inner.sample_relative(view, trial, space) if space else {}
        rel = self._relative[trial.number]
        if name in rel:
            try:
                if dist._contains(dist.to_internal_repr(rel[name])):
                    return rel[name]
            except ValueError:  # not a value of this distribution
                pass
        return inner.sample_independent(view, trial, name, dist)

    # The top level ----------------------------------------------------------------------
    def choose(self, study, dist) -> str:
        from optuna.trial import TrialState

        choices = [c for c in dist.choices if c in self._inner]
        trials, count = _tried(study, choices)
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None
                and all(v <= 0 for v in t.constraints.values())]
        judged = {t.params.get(METHOD) for t in done} | {t.params.get(METHOD) for t in trials
                                                         if t.state == TrialState.RUNNING}
        open_ = {m: n for m, n in count.items() if m not in judged and n < COVER_TRIES}
        if open_:
            return _least_tried(open_, self._rng)
        best = {m: 0.0 for m in choices}
        if done:
            for t, r in zip(done, rewards(done, study.directions)):
                m = t.params.get(METHOD)
                if m in best:
                    best[m] = max(best[m], r)
        total = sum(count.values())
        score = {m: best[m] + UCB_C * math.sqrt(math.log(total) / count[m]) for m in choices}
        top = max(score.values())
        return self._rng.choice([m for m in choices if score[m] == top])



class CoveringTPE(TPESampler):
    """``--sampler tpe-cover``: grouped multivariate TPE (``--sampler tpe``) whose random start
    covers the methods. Its first ``max(n_startup, len(methods))`` trials choose the method least
    tried so far (running trials included; ties at random, seeded), so every method has a trial
    before the model takes over; the rest of each start-up trial is drawn at random as TPE's own
    start does. [RECON: this project's initial design, suggested by the automl5k comparison in
    docs/results/automl5k, where the bandit — whose start is one trial per method — led flat and
    grouped TPE early (their random start can miss the one method that reaches the cheap end of
    the memory axis) and ended level with them.] A module-level class: Ray Tune pickles the
    searcher, sampler included, with every snapshot of the study."""

    def __init__(self, methods: list[str], seed: int = 0, n_startup: int = 5):
        import warnings

        from optuna.exceptions import ExperimentalWarning

        self.methods = list(methods)
        self._n_cover = max(n_startup, len(self.methods))
        self._cover_rng = random.Random(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            super().__init__(seed=seed, n_startup_trials=self._n_cover, multivariate=True, group=True)

    def sample_independent(self, study, trial, name, dist):
        if name == METHOD and trial.number < self._n_cover:
            choices = [c for c in dist.choices if c in self.methods]
            return _encode(_least_tried(_tried(study, choices)[1], self._cover_rng))
        return super().sample_independent(study, trial, name, dist)
