"""Declarative search spaces: YAML -> validated ``SearchSpace`` -> Optuna distributions.

Format (one study per method)::

    method: filtered
    objective: {metric: val/acc, mode: max}
    fixed: {arch: mlp, data: mnist5k, epochs: 15, hparams: {alpha_decay: cosine}}
    params:
      alpha: {float: [1.0e-7, 1.0e-1], log: true}
      gamma: {float: [1.0e-3, 1.0], log: true}
      batch_size: {categorical: [64, 128, 256]}
      arch_args.widths: {categorical: [[256, 256], [512, 512]]}

Conditional parameters (sampled only where they act)::

    params:
      pair: {categorical: [bc, bnn, bnn+, bnn++, pc]}
      mu0: {float: [0.5, 5.0], when: {pair: [bnn++, pc]}}

``when`` maps earlier categorical parameters to the values under which this one is sampled (all
must hold). An inactive parameter is not sampled and the trial runs with the method's default
(or the ``fixed`` value). A conditional space is sampled define-by-run (Optuna); TPE models it
with ``multivariate`` + ``group``; GP and BoTorch model only parameters present in every trial
and sample the rest at random — ``sweep`` warns about that.

A parameter name is a field of the method's ``Hparams`` (``alpha`` -> ``hparams.alpha``), a
top-level run-config key (``batch_size``), or a dotted path (``arch_args.widths``). Everything is
checked before anything launches: unknown keys, wrong types, low >= high, log with low <= 0,
steps, unknown methods, and every bound and choice resolved as a full run config — an error
names the file and the key. Parsed with a safe loader only.
"""
from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .config import RunConfig, load_yaml, resolve
from .errors import ConfigError
from .methods import get_method

OBJECTIVE_METRICS = ("val/acc", "val/loss", "test/acc", "test/loss", "train/acc", "train/loss", "val/acc_top5",
                     "test/acc_top5")
RUN_KEYS = {f.name for f in fields(RunConfig)}


@dataclass(frozen=True)
class Param:
    name: str
    path: tuple[str, ...]
    kind: str  # float | int | categorical
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = ()
    when: tuple = ()  # ((parent name, (allowed values, encoded)), ...)

    def distribution(self):
        import optuna.distributions as od

        if self.kind == "float":
            return od.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return od.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        # Optuna choices must be scalars: lists (e.g. widths) travel as their YAML text.
        return od.CategoricalDistribution([_encode(c) for c in self.choices])

    def decode(self, value):
        return _decode(value) if self.kind == "categorical" else value

    def active(self, values: dict) -> bool:
        """Is this parameter sampled, given the (encoded) values of the parameters before it?"""
        return all(parent in values and values[parent] in allowed for parent, allowed in self.when)

    def suggest(self, trial):
        """Sample this parameter from an Optuna trial (define-by-run)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, [_encode(c) for c in self.choices])


def _encode(v):
    return v if v is None or isinstance(v, (bool, int, float, str)) else "yaml:" + repr(list(v))


def _decode(v):
    if isinstance(v, str) and v.startswith("yaml:"):
        from .config import safe_load

        return safe_load(v[5:])
    return v


@dataclass(frozen=True)
class SearchSpace:
    path: str
    method: str
    metric: str
    mode: str
    fixed: dict
    params: tuple[Param, ...]
    sha256: str
    pack: int = 1  # members per packed trial (``pack:`` in the file; ``--pack`` overrides)
    # Multi-objective studies (AutoML files, bnnsearch/automl.py): objectives after the first
    # ((metric, mode), ...), hard limits ((metric, "max"|"min", bound), ...) and the hypervolume
    # reference point (one value per objective, first included).
    extra_objectives: tuple = ()
    constraints: tuple = ()
    refs: tuple = ()
    # Per objective, whether the hypervolume and the sampler see its log10 (``log: true``: costs
    # that span orders of magnitude); empty when none does.
    log_axes: tuple = ()
    # ``name:`` in the file: a label for the space (its study's default name and its arm in
    # ``compare``), so two spaces of one method can be told apart; "" when not given.
    name: str = ""

    @property
    def arm(self) -> str:
        """What names this space's studies and its ``compare`` arm: its ``name:``, else its method."""
        return self.name or self.method

    @property
    def objectives(self) -> tuple:
        """((metric, mode), ...) of every objective, the first being ``metric``/``mode``."""
        return ((self.metric, self.mode),) + tuple(self.extra_objectives)

    @property
    def multi(self) -> bool:
        return bool(self.extra_objectives)

    @property
    def objective_logs(self) -> tuple:
        """Whether each objective is on a log10 axis, one bool per objective."""
        return self.log_axes or (False,) * len(self.objectives)

    def objectives_text(self) -> str:
        """``max val/acc, min cost/train_gates (log10)``: the objectives as the CLI prints them."""
        return ", ".join(f"{mode} {metric}" + (" (log10)" if lg else "")
                         for (metric, mode), lg in zip(self.objectives, self.objective_logs))

    def label(self, cfg) -> str:
        """What a trial's MLflow run name starts with (its method)."""
        return cfg.method

    def structural(self, p: Param) -> bool:
        """Whether every member of a pack must share this parameter's value (it changes the
        network's shape, the data, the schedule length, or a hyperparameter the method marks
        ``packable: False``): sampled once per pack."""
        from .methods.base import unpackable_hparams

        return p.path[0] != "hparams" or p.path[-1] in unpackable_hparams(get_method(self.method))

    def distributions(self) -> dict:
        return {p.name: p.distribution() for p in self.params}

    @property
    def conditional(self) -> bool:
        return any(p.when for p in self.params)

    def active_params(self, values: dict) -> list[Param]:
        """The parameters a trial with these (flat or nested) values samples."""
        values = flat_values(values)
        return [p for p in self.params if p.active(values)]

    def active_range(self) -> tuple[int, int]:
        """(fewest, most) parameters one trial samples, over every combination of the choices
        that conditions depend on: the count of hyperparameters a method is tuned over."""
        import itertools

        parents = sorted({parent for p in self.params for parent, _ in p.when})
        choices = [[_encode(c) for c in next(q for q in self.params if q.name == n).choices] for n in parents]
        counts = []
        for combo in itertools.product(*choices) if parents else [()]:
            values = dict(zip(parents, combo))
            counts.append(sum(p.active(values) for p in self.params))
        return min(counts), max(counts)

    def key(self) -> str:
        """A hash of what the file compiles to — fixed values, parameters and their ranges and
        conditions, objectives, limits, pack — not of its text: a comment or the order of keys
        changes nothing, a range does. Recorded on a study's run, so a study resumed or counted
        again is known to be the same study."""
        import dataclasses
        import json

        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("path", "sha256", "name")}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=repr).encode()).hexdigest()[:16]

    def ax_startup_trials(self) -> int:
        """Random trials before the model under Ax's default initial design, max(5, 2·d), with d
        the most parameters one trial samples (``--startup-trials ax``). methods.md §7.2: Ax's
        default gives a 6-D arm 12 Sobol trials and a 2-D arm 5, which by itself inflates a
        trial gap between them; this reproduces that design so its effect can be measured."""
        return max(5, 2 * self.active_range()[1])

    def sampler_space(self):
        """What ``OptunaSearch(space=...)`` takes: a distribution dict for a flat space, a
        define-by-run function for a conditional one."""
        if not self.conditional:
            return self.distributions()
        return DefineByRun(self.params)

    def config(self, values: dict, where: str | None = None) -> RunConfig:
        """The run config of one trial: fixed keys plus sampled values (by parameter name;
        dotted names may arrive flat or nested, as Ray Tune unflattens them)."""
        values = flat_values(values)
        raw = copy.deepcopy(self.fixed)
        raw["method"] = self.method
        for p in self.params:
            if p.name in values and p.active(values):
                _set(raw, p.path, p.decode(values[p.name]))
        return resolve(raw, where or self.path)

    def low_point(self) -> dict:
        """Every parameter at its low bound or first choice (a config every trial could have)."""
        return {p.name: (p.low if p.kind != "categorical" else _encode(p.choices[0])) for p in self.params}

    def default_point(self) -> dict | None:
        """The method's paper defaults, if every searched value is inside the space (a good
        first trial for the sampler) and valid together (the defaults of a method can clash with
        the fixed keys, e.g. local_binary's group_size with a width it does not divide); else None."""
        try:
            base = self.config({}).to_dict()
        except ConfigError:
            return None
        point = {}
        for p in self.params:
            if not p.active(point):
                continue
            v = _get(base, p.path)
            if p.kind == "categorical":
                if _encode(v) not in [_encode(c) for c in p.choices]:
                    return None
                point[p.name] = _encode(v)
            elif not (p.low <= v <= p.high) or (p.kind == "int" and int(v) != v):
                return None
            else:
                point[p.name] = v
        try:
            self.config(point)
        except ConfigError:
            return None
        return point


@dataclass(frozen=True)
class DefineByRun:
    """A conditional space as Optuna's define-by-run function: each parameter is suggested
    only when its ``when`` holds. A picklable object, not a closure: Ray Tune pickles the
    searcher (and this with it) into every experiment snapshot."""

    params: tuple

    def __call__(self, trial) -> None:
        values: dict = {}
        for p in self.params:
            if p.active(values):
                values[p.name] = p.suggest(trial)
        return None


def flat_values(values: dict) -> dict:
    """{'arch_args': {'widths': w}} -> {'arch_args.widths': w} for the dotted prefixes (Ray Tune
    hands a trial's config back nested); other keys unchanged."""
    out = {}
    for k, v in values.items():
        if k in ("hparams", "arch_args", "data_args") and isinstance(v, dict):
            for kk, vv in flat_values(v).items():
                out[f"{k}.{kk}"] = vv
        else:
            out[k] = v
    return out


def _set(raw: dict, path: tuple[str, ...], value) -> None:
    node = raw
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = value


def _get(d: dict, path: tuple[str, ...]):
    for k in path:
        d = d[k]
    return d


def _check_not_fixed(fixed: dict, params, params_at: str, fixed_at: str) -> None:
    """A parameter every trial samples must not also be fixed: the sampled value silently won,
    so the file said two things and the study did one. (A conditional parameter may have a fixed
    value for the trials that do not sample it.)"""
    for p in params:
        if p.when:
            continue
        try:
            v = _get(fixed, p.path)
        except (KeyError, TypeError):
            continue
        key = ".".join(p.path)
        raise ConfigError(f"{key} is searched here and fixed too ({fixed_at}.{key} = {v!r}); keep one",
                          f"{params_at}.{p.name}")


def _param(name: str, spec, hp_fields: set[str], where: str, earlier: dict | None = None) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError("expected a mapping like {float: [low, high]}", where)
    spec = dict(spec)
    when = _when(spec.pop("when", None), earlier or {}, where)
    kinds = [k for k in ("float", "int", "categorical") if k in spec]
    if len(kinds) != 1:
        raise ConfigError("needs exactly one of float, int, categorical", where)
    kind = kinds[0]
    allowed = {"categorical"} if kind == "categorical" else {kind, "log", "step"}
    extra = set(spec) - allowed
    if extra:
        raise ConfigError(f"unknown key {sorted(extra)[0]!r}; allowed: {', '.join(sorted(allowed | {'when'}))}", where)
    if "." in name:
        path = tuple(name.split("."))
        if path[0] not in ("hparams", "arch_args", "data_args"):
            raise ConfigError("dotted names must start with hparams., arch_args. or data_args.", where)
    elif name in hp_fields:
        path = ("hparams", name)
    elif name in RUN_KEYS - {"method", "hparams", "arch_args", "data_args"}:
        path = (name,)
    else:
        raise ConfigError(f"unknown parameter; the method's hyperparameters are {', '.join(sorted(hp_fields))}", where)
    if kind == "categorical":
        choices = spec["categorical"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError("categorical needs a non-empty list", where)
        return Param(name, path, kind, choices=tuple(choices), when=when)
    bounds = spec[kind]
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise ConfigError(f"{kind} needs [low, high]", where)
    low, high = bounds
    num = (int,) if kind == "int" else (int, float)
    if any(isinstance(b, bool) or not isinstance(b, num) for b in bounds):
        raise ConfigError(f"bounds must be {'integers' if kind == 'int' else 'numbers'}, got {bounds}", where)
    if low >= high:
        raise ConfigError(f"low >= high ({low} >= {high})", where)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError("log must be true or false", where)
    if log and low <= 0:
        raise ConfigError(f"log scale needs low > 0, got {low}", where)
    step = spec.get("step")
    if step is not None and (log or not isinstance(step, num) or isinstance(step, bool) or step <= 0):
        raise ConfigError("step must be a positive number and cannot be combined with log", where)
    if kind == "float":
        low, high = float(low), float(high)
    return Param(name, path, kind, low, high, log, step, when=when)


def _absolute(path: str) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (Path.cwd() / p).resolve())


def _when(spec, earlier: dict, where: str) -> tuple:
    """Validate ``when: {parent: [values]}`` against the categorical parameters declared before."""
    if spec is None:
        return ()
    if not isinstance(spec, dict) or not spec:
        raise ConfigError("when must be a mapping {parameter: [values]}", f"{where}.when")
    out = []
    for parent, vals in spec.items():
        p = earlier.get(parent)
        if p is None or p.kind != "categorical":
            raise ConfigError(f"{parent!r} must be a categorical parameter declared above this one", f"{where}.when")
        vals = vals if isinstance(vals, list) else [vals]
        enc = [_encode(c) for c in p.choices]
        bad = [v for v in vals if _encode(v) not in enc]
        if bad or not vals:
            raise ConfigError(f"{bad[0] if bad else vals!r} is not a choice of {parent} ({', '.join(map(str, p.choices))})",
                              f"{where}.when.{parent}")
        out.append((parent, tuple(_encode(v) for v in vals)))
    return tuple(out)


def _some_value_resolves(space: SearchSpace, params, lows: dict) -> bool:
    """Whether the fixed keys form a valid config together with some searched value (then a
    failing value is the choice's fault, not the fixed part's or a default's)."""
    for p in params:
        for v in _edge_values(p):
            try:
                space.config({**lows, **{k: a[0] for k, a in p.when}, p.name: v}, where="config")
                return True
            except ConfigError:
                pass
    return False


NAME_CHARS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def space_name(raw: dict, where: str) -> str:
    """The optional ``name:`` of a space file: letters, digits, '_', '.', '+', '-' (it becomes part of
    study names and MLflow run names; '@' separates a compare arm from its sampler or pack)."""
    if "name" not in raw:
        return ""
    name = raw["name"]
    if not isinstance(name, str) or not NAME_CHARS.fullmatch(name) or len(name) > 64:
        raise ConfigError(f"name must be up to 64 letters, digits, '_', '.', '+' or '-', starting with a letter or digit "
                          f"(it names the space's studies and its compare arm), got {name!r}", f"{where}: name")
    return name


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    raw = load_yaml(path)
    where = str(path)
    if "methods" in raw:  # an AutoML space: several methods in one study
        from .automl import load_automl

        return load_automl(path, raw)
    unknown = set(raw) - {"method", "name", "objective", "fixed", "params", "pack"}
    if unknown:
        raise ConfigError(f"unknown key {sorted(unknown)[0]!r}; allowed: fixed, method, name, objective, pack, params",
                          f"{where}: {sorted(unknown)[0]}")
    pack = raw.get("pack", 1)
    if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
        raise ConfigError(f"pack must be an integer >= 1 (members per packed trial), got {pack!r}", f"{where}: pack")
    if "method" not in raw:
        raise ConfigError("missing key 'method'", where)
    method = get_method(raw["method"], f"{where}: method")
    obj = raw.get("objective", {"metric": "val/acc", "mode": "max"})
    if not isinstance(obj, dict) or set(obj) - {"metric", "mode"}:
        raise ConfigError("objective must be {metric: ..., mode: max|min}", f"{where}: objective")
    metric, mode = obj.get("metric", "val/acc"), obj.get("mode", "max")
    if metric not in OBJECTIVE_METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(OBJECTIVE_METRICS)}", f"{where}: objective.metric")
    if mode not in ("max", "min"):
        raise ConfigError(f"mode must be max or min, got {mode!r}", f"{where}: objective.mode")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError("fixed must be a mapping", f"{where}: fixed")
    # Ray Tune runs each trial in a working directory of its own: a relative data_root (the
    # default ./data included) is resolved here, in the driver, against the directory the
    # command runs in, so every trial reads (and caches into) the same folder.
    root = fixed.get("data_root", RunConfig.data_root)
    if isinstance(root, str):
        fixed = {**fixed, "data_root": _absolute(root)}
    if "method" in fixed:
        raise ConfigError("put the method at the top level, not under fixed", f"{where}: fixed.method")
    try:
        resolve({**fixed, "method": raw["method"]}, f"{where}: fixed")
        fixed_error = None
    except ConfigError as e:  # maybe only with a default that a searched parameter replaces
        fixed_error = e
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict) or not params_raw:
        raise ConfigError("params must be a non-empty mapping", f"{where}: params")
    hp_fields = {f.name for f in fields(method.Hparams)}
    spec_root = params_raw.get("data_root") if isinstance(params_raw, dict) else None
    if isinstance(spec_root, dict) and isinstance(spec_root.get("categorical"), list):
        params_raw = {**params_raw, "data_root": {**spec_root, "categorical": [
            _absolute(v) if isinstance(v, str) else v for v in spec_root["categorical"]]}}
    declared: dict[str, Param] = {}
    for n, spec in params_raw.items():
        declared[str(n)] = _param(str(n), spec, hp_fields, f"{where}: params.{n}", declared)
    params = tuple(declared.values())
    _check_not_fixed(raw.get("fixed") or {}, params, f"{where}: params", "fixed")  # as written (no data_root default)
    searched_epochs = [p.name for p in params if p.path == ("epochs",)]
    if searched_epochs:
        raise ConfigError("epochs cannot be searched: a trial's budget is the fixed epoch count (compared against it "
                          "to tell complete from stopped-early trials); put epochs under fixed",
                          f"{where}: params.epochs")
    space = SearchSpace(where, raw["method"], metric, mode, fixed, params,
                        hashlib.sha256(path.read_bytes()).hexdigest(), pack, name=space_name(raw, where))
    # Every bound and choice must resolve as a full run config (types, Hparams.validate, ...).
    lows = space.low_point()
    if fixed_error is not None and not _some_value_resolves(space, params, lows):
        raise fixed_error  # the fixed part fails whatever the searched values are
    # A parameter none of whose values resolves with the others at their low points is not blamed
    # until every parameter is checked: another one's first choice may be what fails.
    deferred = [e for p in params if (e := _check_values(space, p, lows, f"{where}: params.{p.name}", strict=False))]
    if deferred:
        raise deferred[0]
    _check_pairs(space, lows, where)
    return space


def _check_values(space: SearchSpace, p: Param, base: dict, key: str, extra: str = "",
                  strict: bool = True) -> ConfigError | None:
    """Every bound and choice of p (every value of an integer range of up to 512) resolves as a
    full run config with the others at ``base``, in a context where p acts. Raises the first
    failure, except (``strict`` False) when no value of p resolves: then returns it."""
    base = {**base, **{parent: allowed[0] for parent, allowed in p.when}}
    first, some_ok = None, False
    for v in _all_values(p) or _edge_values(p):
        try:
            space.config({**base, p.name: v}, where="config")
            some_ok = True
        except ConfigError as e:
            first = first or ConfigError(f"value {p.decode(v)!r} is invalid{extra}: {e}", key)
    if first is not None and (strict or some_ok):
        raise first
    return first


def _edge_values(p: Param) -> list:
    return [p.low, p.high] if p.kind != "categorical" else [_encode(c) for c in p.choices]


def _all_values(p: Param, most: int = 512) -> list | None:
    """Every value of an integer range of at most ``most`` values (each is checked: a group size
    in [1, 8] with a width of 64 fails at 3, not at its bounds); None for other parameters."""
    if p.kind != "int":
        return None
    values = range(p.low, p.high + 1, p.step or 1)
    return list(values) if len(values) <= most else None


def _check_pairs(space: SearchSpace, lows: dict, where: str, key=lambda p: f"params.{p.name}") -> None:
    """Every pair of searched parameters must resolve together wherever both act, each at its
    bounds or choices (every value of an integer range of up to 64): a combination that a method
    rejects (``scaling: true`` with ``init_scale: 0``; a width that a searched group size does not
    divide) would otherwise pass the one-at-a-time check above and stop the study when a trial
    samples it. Not checked: interactions of three or more parameters, and float values inside a
    range (no method's validation rejects one today; a sampled config that failed anyway would
    stop the study with an error naming the value, not be recorded as a failed trial)."""
    params = space.params
    values_of = {p.name: _all_values(p, 64) or _edge_values(p) for p in params}
    for i, p in enumerate(params):
        for q in params[i + 1:]:
            context: dict[str, tuple] = {}
            for parent, allowed in p.when + q.when:  # a context where both act, if there is one
                context[parent] = tuple(a for a in context.get(parent, allowed) if a in allowed)
            if any(not allowed for allowed in context.values()):
                continue
            base = {**lows, **{parent: allowed[0] for parent, allowed in context.items()}}
            for vp in values_of[p.name]:
                for vq in values_of[q.name]:
                    values = {**base, p.name: vp, q.name: vq}
                    if not (p.active(values) and q.active(values)):
                        continue  # e.g. q acts only for other values of p
                    try:
                        space.config(values, where="config")
                    except ConfigError as e:
                        raise ConfigError(
                            f"{p.name} = {p.decode(vp)!r} together with {q.name} = {q.decode(vq)!r} is invalid: {e}. "
                            f"Narrow one of them, or search {q.name} only where it is valid (when: {{{p.name}: "
                            f"[...]}}, with {p.name} categorical)", f"{where}: {key(q)}") from None
