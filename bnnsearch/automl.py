"""AutoML spaces: several methods in one study, several objectives, hard constraints.

Format (``search_spaces/automl.yaml`` ships all six methods)::

    objectives:
      - {metric: val/acc, mode: max}
      - {metric: cost/mem_bits, mode: min}          # ref: the hypervolume reference (optional)
    constraints: {cost/mem_bits: {max: 2.0e6}}      # optional hard limits
    fixed: {data: digits, epochs: 10}
    params:                                         # shared by every method (run-config keys)
      arch_args.widths: {categorical: [[64, 64], [256, 256]]}
    methods:                                        # which methods compete, each with its own space
      latent:   {params: {lr: {float: [0.1, 100], log: true}}}
      local_binary: {fixed: {arch: local_mlp}, params: {robustness: {float: [0.0, 1.0]}}}

The space compiles to one conditional ``SearchSpace``: a categorical ``method`` parameter on
top, each method's parameters beneath it (named ``<method>:<param>``, sampled only when that
method is chosen, with the method's own ``when`` conditions kept), the shared ones in every
trial. The sampler sees the hierarchy define-by-run. TPE (``multivariate`` + ``group``)
decomposes it into per-method groups and models each method's parameters jointly where they
co-occur — the default here. Optuna's GPSampler, the BoTorch sampler and NSGA-II model only
the parameters every trial has (``method`` and the shared ones) and draw every method's own
parameters at random (optuna#6164): ``automl`` warns when one of them is chosen.
``--sampler bandit`` (``hierarchy.py``) is the other hierarchy: a bandit over methods on top,
one Gaussian-process sampler per method beneath.

Objectives: any of the accuracy/loss metrics, the static inference cost (``cost/mem_bits``,
``cost/bops``, ``cost/ops``, ``cost/flops``, ``cost/macs``, ``cost/params``,
``cost/compression``), the modelled training cost (``cost/train_gates``, one unit for every
method: cost.py) or the trial's training time (``time/total_s``, or the process CPU seconds
``time/total_cpu_s``, which other work on the machine inflates less). A diverged trial gets the
worst value of every objective (never on a front). Constraints go to Optuna as
``trial.set_constraint`` values (feasible when <= 0); a trial over a limit is never "best" and
never on the front. The hypervolume reference point is fixed per study, so the hypervolume
against trial index never decreases: ``ref`` of an objective, else 0 for a maximised accuracy,
else the objective's constraint bound; otherwise the file must give ``ref``.
``log: true`` on a minimised objective puts its axis in log10 for the hypervolume and for what
the sampler is told (``log_scaled``; costs spanning orders of magnitude); recorded values, the
front and ``pareto.json``'s points stay in the metric's units.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from .config import RunConfig, resolve
from .cost import STATIC_COST
from .errors import ConfigError
from .methods import get_method
from .spaces import (OBJECTIVE_METRICS, RUN_KEYS, Param, SearchSpace, _absolute, _check_pairs, _check_values, _decode,
                     _check_not_fixed, _encode, _param, _set, flat_values, space_name)

AUTOML_METRICS = OBJECTIVE_METRICS + STATIC_COST + ("cost/train_gates", "time/total_s", "time/total_cpu_s")
MAX_OBJECTIVES = 3
METHOD = "method"  # the top-level parameter of an AutoML space


def _merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``; nested mappings (hparams, arch_args, data_args) merged key by key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@dataclass(frozen=True)
class AutoSpace(SearchSpace):
    """One study over several methods (see the module docstring). ``method`` is "automl"; a
    trial's method is its ``method`` parameter."""

    method_fixed: tuple = ()  # ((method, its fixed mapping), ...) in file order

    @property
    def methods(self) -> list[str]:
        return [m for m, _ in self.method_fixed]

    def owner(self, p: Param) -> str | None:
        """The method a parameter belongs to (None: shared, or the method choice itself)."""
        head, sep, _ = p.name.partition(":")
        return head if sep else None

    def structural(self, p: Param) -> bool:
        from .methods.base import unpackable_hparams

        m = self.owner(p)
        if p.path[0] != "hparams" or m is None:
            return True
        return p.path[-1] in unpackable_hparams(get_method(m))

    def config(self, values: dict, where: str | None = None) -> RunConfig:
        values = flat_values(values)
        m = _decode(values.get(METHOD, self.methods[0]))
        raw = _merge(self.fixed, dict(self.method_fixed)[m])
        raw["method"] = m
        vals = {**values, METHOD: _encode(m)}
        for p in self.params:
            if p.name != METHOD and p.name in vals and p.active(vals):
                _set(raw, p.path, p.decode(vals[p.name]))
        return resolve(raw, where or self.path)

    def default_point(self) -> dict | None:
        return None  # no method's paper defaults are a neutral first trial of a study across methods


def _objectives(raw, where: str) -> list[dict]:
    if raw is None:
        return [{"metric": "val/acc", "mode": "max"}]
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ConfigError("objectives must be a list like [{metric: val/acc, mode: max}, ...]", f"{where}: objectives")
    if len(raw) > MAX_OBJECTIVES:
        raise ConfigError(f"at most {MAX_OBJECTIVES} objectives, got {len(raw)}", f"{where}: objectives")
    out, seen = [], set()
    for i, o in enumerate(raw):
        at = f"{where}: objectives[{i}]"
        if not isinstance(o, dict) or set(o) - {"metric", "mode", "ref", "log"} or "metric" not in o:
            raise ConfigError("each objective is {metric: ..., mode: max|min} (optionally ref: a number, log: true)", at)
        metric, mode = o["metric"], o.get("mode", "max")
        if metric not in AUTOML_METRICS:
            raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(AUTOML_METRICS)}", f"{at}.metric")
        if mode not in ("max", "min"):
            raise ConfigError(f"mode must be max or min, got {mode!r}", f"{at}.mode")
        if metric in seen:
            raise ConfigError(f"{metric} is listed twice", f"{at}.metric")
        ref = o.get("ref")
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (int, float)) or not math.isfinite(ref)):
            raise ConfigError(f"ref must be a finite number, got {ref!r}", f"{at}.ref")
        log = o.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"log must be true or false, got {log!r}", f"{at}.log")
        if log and mode != "min":
            raise ConfigError("log: true is for a cost that is minimised over orders of magnitude (mode: min)",
                              f"{at}.log")
        if log and len(raw) < 2:
            raise ConfigError("log: true scales an axis of the hypervolume: it needs two or more objectives", f"{at}.log")
        seen.add(metric)
        out.append({"metric": metric, "mode": mode, "ref": ref, "log": log})
    return out


def _constraints(raw, where: str) -> list[tuple[str, str, float]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise ConfigError("constraints must be a mapping like {cost/mem_bits: {max: 2.0e6}}", f"{where}: constraints")
    out = []
    for metric, lim in raw.items():
        at = f"{where}: constraints.{metric}"
        if metric not in AUTOML_METRICS:
            raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(AUTOML_METRICS)}", at)
        if not isinstance(lim, dict) or not lim or set(lim) - {"max", "min"}:
            raise ConfigError("a limit is {max: value} and/or {min: value}", at)
        for kind, v in lim.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{kind} must be a finite number, got {v!r}", f"{at}.{kind}")
            out.append((metric, kind, float(v)))
    return out


def _ref(o: dict, constraints: list, at: str) -> float:
    if o["ref"] is not None:
        return float(o["ref"])
    if o["mode"] == "max" and o["metric"].endswith("/acc"):
        return 0.0
    for metric, kind, v in constraints:
        if metric == o["metric"] and kind == ("max" if o["mode"] == "min" else "min"):
            return v
    raise ConfigError(f"the hypervolume needs a reference value for {o['metric']}: add ref: (the worst value that "
                      f"still counts) to this objective, or a constraint on it", at)


def load_automl(path: Path, raw: dict) -> AutoSpace:
    """Validate an AutoML space file (everything checked before anything launches: errors name
    the file and the key)."""
    where = str(path)
    allowed = {"objectives", "constraints", "fixed", "params", "methods", "name", "pack"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        hint = " (one method per file uses method:, an AutoML space lists methods:)" if unknown[0] in ("method", "objective") else ""
        raise ConfigError(f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}{hint}", f"{where}: {unknown[0]}")
    pack = raw.get("pack", 1)
    if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
        raise ConfigError(f"pack must be an integer >= 1 (members per packed trial), got {pack!r}", f"{where}: pack")
    objs = _objectives(raw.get("objectives"), where)
    cons = _constraints(raw.get("constraints"), where)
    refs = tuple(_ref(o, cons, f"{where}: objectives[{i}]") for i, o in enumerate(objs)) if len(objs) > 1 else ()
    for i, (o, r) in enumerate(zip(objs, refs)):
        if o["log"] and not r > 0:
            raise ConfigError(f"a log axis needs a positive reference value, got {r:g}", f"{where}: objectives[{i}].ref")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError("fixed must be a mapping", f"{where}: fixed")
    if "method" in fixed:
        raise ConfigError("the methods that compete are listed under methods:, not fixed", f"{where}: fixed.method")
    root = fixed.get("data_root", RunConfig.data_root)
    if isinstance(root, str):  # resolved in the driver: Ray runs trials in per-trial folders
        fixed = {**fixed, "data_root": _absolute(root)}
    methods_raw = raw.get("methods")
    if not isinstance(methods_raw, dict) or not methods_raw:
        raise ConfigError("methods must be a non-empty mapping {method: {fixed: ..., params: ...}}", f"{where}: methods")

    shared_raw = raw.get("params") or {}
    if not isinstance(shared_raw, dict):
        raise ConfigError("params must be a mapping", f"{where}: params")
    top = Param(METHOD, ("method",), "categorical", choices=tuple(str(m) for m in methods_raw))
    params: list[Param] = [top]
    for n, spec in shared_raw.items():
        at = f"{where}: params.{n}"
        if str(n) in ("method", "epochs"):
            raise ConfigError(f"{n} cannot be a shared parameter (methods are listed under methods:, epochs are fixed)", at)
        if str(n).startswith("hparams.") or ("." not in str(n) and str(n) not in RUN_KEYS):
            raise ConfigError("a shared parameter is a run-config key (batch_size, ...) or an arch_args./data_args. "
                              "path; a method's hyperparameters go under methods.<method>.params", at)
        p = _param(str(n), spec, set(), at, {})
        if p.when:
            raise ConfigError("shared parameters cannot be conditional; put conditional ones under a method", f"{at}.when")
        params.append(p)
    shared = params[1:]
    shared_paths = {p.path: p.name for p in shared}
    _check_not_fixed(raw.get("fixed") or {}, shared, f"{where}: params", "fixed")  # as written (no data_root default)

    method_fixed = []
    for m, spec in methods_raw.items():
        m = str(m)
        at = f"{where}: methods.{m}"
        method = get_method(m, at)
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - {"fixed", "params"}:
            bad = sorted(set(spec) - {"fixed", "params"}) if isinstance(spec, dict) else None
            raise ConfigError(f"unknown key {bad[0]!r}; allowed: fixed, params" if bad else
                              "expected a mapping {fixed: ..., params: ...}", f"{at}.{bad[0]}" if bad else at)
        mfixed = spec.get("fixed") or {}
        if not isinstance(mfixed, dict):
            raise ConfigError("fixed must be a mapping", f"{at}.fixed")
        if "method" in mfixed:
            raise ConfigError("the method is the key of this entry", f"{at}.fixed.method")
        if isinstance(mfixed.get("data_root"), str):
            mfixed = {**mfixed, "data_root": _absolute(mfixed["data_root"])}
        method_fixed.append((m, mfixed))
        mparams = spec.get("params") or {}
        if not isinstance(mparams, dict):
            raise ConfigError("params must be a mapping", f"{at}.params")
        hp_fields = {f.name for f in fields(method.Hparams)}
        declared: dict[str, Param] = {}
        for n, pspec in mparams.items():
            pat = f"{at}.params.{n}"
            if str(n) == "epochs":
                raise ConfigError("epochs cannot be searched; put them under fixed", pat)
            p = _param(str(n), pspec, hp_fields, pat, declared)
            if p.path in shared_paths:
                raise ConfigError(f"already searched for every method under params.{shared_paths[p.path]}", pat)
            declared[str(n)] = p
        _check_not_fixed(spec.get("fixed") or {}, declared.values(), f"{at}.params", f"methods.{m}.fixed")
        _check_not_fixed(raw.get("fixed") or {}, declared.values(), f"{at}.params", "fixed")
        _check_not_fixed(spec.get("fixed") or {}, shared, f"{where}: params", f"methods.{m}.fixed")
        for n, p in declared.items():
            when = ((METHOD, (_encode(m),)),) + tuple((f"{m}:{parent}", vals) for parent, vals in p.when)
            params.append(dataclasses.replace(p, name=f"{m}:{n}", when=when))

    space = AutoSpace(where, "automl", objs[0]["metric"], objs[0]["mode"], fixed, tuple(params),
                      hashlib.sha256(Path(path).read_bytes()).hexdigest(), pack,
                      extra_objectives=tuple((o["metric"], o["mode"]) for o in objs[1:]),
                      constraints=tuple(cons), refs=refs, method_fixed=tuple(method_fixed),
                      log_axes=tuple(o["log"] for o in objs) if any(o["log"] for o in objs) else (),
                      name=space_name(raw, where))
    _validate(space, where)
    return space


def _validate(space: AutoSpace, where: str) -> None:
    """Every method's fixed part, and every bound and choice of every parameter that acts for
    it, resolves as a full run config."""
    lows = space.low_point()
    for m in space.methods:
        base = {**lows, METHOD: m}
        try:
            space.config(base, where="config")
        except ConfigError as e:
            raise ConfigError(f"does not resolve for this method with the other values at their low bounds: {e}",
                              f"{where}: methods.{m}") from None
        for p in space.params[1:]:
            own = space.owner(p)
            if own not in (None, m):
                continue
            key = f"params.{p.name}" if own is None else f"methods.{m}.params.{p.name.partition(':')[2]}"
            _check_values(space, p, base, f"{where}: {key}", f" for method {m}" if own is None else "")
    # Pairs, wherever both act (a method's own parameter only with that method chosen).
    _check_pairs(space, lows, where, key=lambda p: f"params.{p.name}" if space.owner(p) is None
                 else f"methods.{space.owner(p)}.params.{p.name.partition(':')[2]}")


# Fronts and hypervolume --------------------------------------------------------------

def _as_min(values, objectives) -> list[float]:
    return [(-v if mode == "max" else v) for v, (_, mode) in zip(values, objectives)]


def dominates(a, b, objectives) -> bool:
    """Whether objective vector a Pareto-dominates b (no worse in every objective, better in one)."""
    a, b = _as_min(a, objectives), _as_min(b, objectives)
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(points: list[dict], objectives) -> list[dict]:
    """The non-dominated points (each a dict with ``objectives``: a value per objective) among
    the feasible complete ones, best first by the first objective, then the next ones. Points
    with equal objectives are all kept (none dominates the others)."""
    cand = [p for p in points if p.get("feasible", True) and p.get("status") == "complete"]
    front = [p for p in cand if not any(dominates(q["objectives"], p["objectives"], objectives) for q in cand)]
    return sorted(front, key=lambda p: _as_min(p["objectives"], objectives))


def log_scaled(vector, log_axes) -> list:
    """The values as the sampler and the hypervolume see them: log10 on the ``log: true`` axes
    (a value <= 0, which no cost reaches, is taken as 1e-300)."""
    if not log_axes:
        return list(vector)
    return [math.log10(max(v, 1e-300)) if lg else v for v, lg in zip(vector, log_axes)]


def hypervolume(vectors: list, objectives, refs, log_axes=()) -> float:
    """The volume dominated by the objective vectors and bounded by the reference point
    (points no better than the reference in some objective add nothing), with the ``log_axes``
    in log10. Exact: a sweep in 2-D, inclusion-exclusion over slices in 3-D."""
    pts = [_as_min(log_scaled(v, log_axes), objectives) for v in vectors]
    ref = _as_min(log_scaled(refs, log_axes), objectives)
    pts = [p for p in pts if all(x < r for x, r in zip(p, ref))]
    if not pts:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in pts)
    if len(ref) == 2:
        vol, best_y = 0.0, ref[1]
        for x, y in sorted(pts):
            if y < best_y:
                vol += (ref[0] - x) * (best_y - y)
                best_y = y
        return vol
    # d = 3: slice along the last objective, 2-D hypervolume of the points below each slice
    zs = sorted({p[-1] for p in pts})
    vol = 0.0
    for i, z in enumerate(zs):
        top = zs[i + 1] if i + 1 < len(zs) else ref[-1]
        below = [p[:-1] for p in pts if p[-1] <= z]
        vol += (top - z) * hypervolume(below, [("", "min")] * (len(ref) - 1), ref[:-1])
    return vol


def constraint_values(m: dict, space: SearchSpace) -> dict[str, float]:
    """Optuna constraint values (feasible when <= 0), keyed ``metric:max`` / ``metric:min``."""
    out = {}
    for metric, kind, bound in space.constraints:
        v = m.get(metric)
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(v):
            out[f"{metric}:{kind}"] = 1e30  # unknown: infeasible
        else:
            out[f"{metric}:{kind}"] = float(v - bound if kind == "max" else bound - v)
    return out


# Warm start ---------------------------------------------------------------------------------

WARM_MAX = 5  # earlier configurations enqueued at most (the start of the study's design)


def point_from_params(space: SearchSpace, params: dict) -> dict | None:
    """The parameter values (as the sampler names them) of a recorded trial's resolved config
    (MLflow params: dotted keys, string values), or None if some parameter it would sample is
    missing or outside this space."""
    from .config import safe_load

    def value(key):
        raw = params.get(key)
        if raw is None:
            return None
        try:
            return safe_load(raw) if isinstance(raw, str) else raw
        except Exception:  # noqa: BLE001 - a free-text param that is no YAML: compare as text
            return raw

    point: dict = {}
    for p in space.params:
        if not p.active(point):
            continue
        v = value(".".join(p.path))
        if v is None:
            return None
        if p.kind == "categorical":
            if _encode(v) not in [_encode(c) for c in p.choices]:
                return None
            point[p.name] = _encode(v)
        else:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not p.low <= v <= p.high:
                return None
            if p.kind == "int" and int(v) != v:
                return None
            point[p.name] = int(v) if p.kind == "int" else float(v)
    return point


def warm_points(space: SearchSpace, uri: str, experiment: str, limit: int = WARM_MAX) -> tuple[list[dict], str]:
    """The best configurations of every finished trial of an earlier experiment in the same
    store that fit this space: its Pareto front under this space's objectives and constraints
    (the best by the first objective for one objective), at most ``limit``. Returns them and a
    line saying what was found."""
    from mlflow.tracking import MlflowClient

    from .errors import UserError

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(f"--warm-start {experiment!r}: no such experiment in {uri} (there: {', '.join(names) or 'none'})")
    runs = client.search_runs([exp.experiment_id], "tags.`bnnsearch.kind` = 'trial' and tags.`bnnsearch.status` = 'complete'",
                              max_results=50000)
    cands, seen = [], set()
    for r in runs:
        m = r.data.metrics
        if any(metric not in m for metric, _ in space.objectives):
            continue
        point = point_from_params(space, r.data.params)
        if point is None:
            continue
        key = json.dumps(point, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        ok = all(v <= 0 for v in constraint_values(m, space).values())
        cands.append({"objectives": [m[metric] for metric, _ in space.objectives], "feasible": ok,
                      "status": "complete", "point": point})
    best = pareto_front(cands, space.objectives)[:limit]
    note = (f"--warm-start {experiment}: {len(best)} of its {len(runs)} complete trials enqueued first "
            f"({len(cands)} fit this space)")
    return [b["point"] for b in best], note


# The study, its front, and the registered network ---------------------------------------

def front_records(summary: dict, space: SearchSpace, cpus: float) -> list[dict]:
    """The Pareto front of a finished study: each point's objectives, method, resolved
    config and MLflow run id, best first by the first objective."""
    from .trial import trial_config

    out = []
    for i, r in enumerate(pareto_front(summary["trials"], space.objectives)):
        cfg = trial_config(space, r["config"], cpus)
        out.append({"rank": i + 1, "trial": r["trial"], "run_id": r["run_id"], "method": cfg.method,
                    "objectives": {metric: v for (metric, _), v in zip(space.objectives, r["objectives"])},
                    "config": cfg.to_dict()})
    return out


def front_ties(front: list[dict]) -> list[str]:
    """One line per group of front points that tie on every objective (distinct configurations,
    equally good: none dominates another, so the front keeps them all), printed under the front."""
    groups: dict[tuple, list[int]] = {}
    for p in front:
        groups.setdefault(tuple(p["objectives"].values()), []).append(p["rank"])
    return [f"ranks {', '.join(map(str, g))} tie on every objective (different configurations; --pick chooses)"
            for g in groups.values() if len(g) > 1]


def _outdir(a, out: str | None) -> Path:
    return Path(out or f"runs/{a.study_name()}")


def check_flags(a, out: str | None, pick: int | None) -> None:
    """``automl``'s own flags, checked before anything runs (the CLI: before the header)."""
    from .errors import UserError
    from .runio import check_out_dir, check_out_owner

    if pick is not None and pick < 1:
        raise UserError(f"--pick {pick}: a rank on the front, 1 for the best first objective")
    outdir = _outdir(a, out)
    check_out_owner(outdir, "pareto.json", "study", a.study_name(), "study", f"--out {outdir}")
    check_out_dir(outdir, f"--out {outdir}")  # a folder made at the end, after the study


def run_automl(a, out: str | None = None, pick: int | None = None, warm_start: str | None = None,
               ready=None) -> dict:
    """Run (or resume) an AutoML study (``sweep.run_sweep`` on an AutoML space), then write its
    Pareto front (``register_pick`` registers a point of it). With
    ``warm_start`` (an experiment of the same store) a fresh study enqueues that experiment's
    best configurations that fit this space first."""
    import dataclasses as dc

    from .errors import UserError
    from .sweep import run_sweep
    from .tracking import Tracker, check_store

    space = a.space
    check_flags(a, out, pick)
    outdir = _outdir(a, out)
    # recorded on the study; a resume must name the same experiment (its searcher already holds
    # the points enqueued when the study began: they are not read again)
    a = dc.replace(a, warm_start=warm_start or "")
    if warm_start and not a.resume:
        points, note = warm_points(space, check_store(a.tracking_uri, must_exist=True), warm_start)
        if not a.quiet:
            print(note, flush=True)
        a = dc.replace(a, points=tuple(points))
    summary = run_sweep(a, ready)
    front = front_records(summary, space, a.cpus_per_trial)
    hv = (hypervolume([list(p["objectives"].values()) for p in front], space.objectives, space.refs, space.log_axes)
          if space.multi else None)
    doc = {"study": summary["study"], "objectives": [{"metric": m, "mode": d, **({"log": True} if lg else {})}
                                                    for (m, d), lg in zip(space.objectives, space.objective_logs)],
           "constraints": [{"metric": m, kind: b} for m, kind, b in space.constraints],
           "reference_point": list(space.refs), "hypervolume": hv, "front": front}
    from . import interrupts

    with interrupts.held():  # the finished study's front is written whole, file and MLflow copy
        tracker = Tracker(summary["tracking_uri"], summary["experiment"])
        tracker.log_json(summary["parent_run_id"], doc, "pareto.json")
        try:
            outdir.mkdir(parents=True, exist_ok=True)
            (outdir / "pareto.json").write_text(json.dumps(doc, indent=1))
        except OSError as e:  # checked before the study, but a write can still fail
            raise UserError(f"--out {outdir}: cannot write pareto.json ({e.strerror}); the study and its front are "
                            f"recorded (pareto.json of MLflow run {summary['parent_run_id']})") from None
    summary.update(front=front, hypervolume=hv, out=str(outdir))
    return summary


def register_pick(summary: dict, name: str, pick: int | None = None, registry_uri: str | None = None) -> dict:
    """``--register``: the chosen front point (rank ``pick``, default 1) retrained and registered
    (in ``registry_uri``, default the study's tracking store: ``tracking.registry_store``)."""
    from .errors import UserError
    from .tracking import Tracker

    front = summary["front"]
    if not front:
        raise UserError(f"--register {name}: the study has no feasible complete trial to register")
    if pick is not None and pick > len(front):
        raise UserError(f"--pick {pick}: the front has {len(front)} point(s)")
    tracker = Tracker(summary["tracking_uri"], summary["experiment"])
    return register_model(front[(pick or 1) - 1], name, summary, tracker, registry_uri)


def register_model(point: dict, name: str, summary: dict, tracker, registry_uri: str | None = None) -> dict:
    """Retrain a front point's configuration with its seed (in this process, the trial's thread
    count), log the network as an MLflow PyTorch model (signature, input example, config, cost
    table, per-epoch metrics) in a run of the study's experiment, and register it as ``name``."""
    from . import interrupts
    from .config import resolve
    from .engine import fit

    cfg = resolve(point["config"], "front point")
    res = fit(cfg)  # a Ctrl-C here leaves nothing behind (the caller says so)
    with interrupts.held():  # from the run to the registered version: whole, or not begun
        return _log_registered(res, cfg, point, name, summary, tracker, registry_uri)


def _log_registered(res, cfg, point: dict, name: str, summary: dict, tracker, registry_uri: str | None) -> dict:
    """``register_model``'s record: the model run, its MLflow model and the registry version."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from .config import dump
    from .engine import load_data
    from .modelio import BinaryNet, module_scalars

    data = load_data(cfg, "cpu")
    model = BinaryNet(res.model.cpu(), cfg.to_dict(), data.in_shape, data.num_classes).eval()
    x = data.x_test[:5].cpu()
    with torch.no_grad():
        y = model(x).numpy()
    x_np = x.numpy().astype(np.float32)
    rid = tracker.client.create_run(tracker.experiment_id, run_name=f"model {name}", tags={
        "bnnsearch.kind": "model", "bnnsearch.study": summary["study"], "bnnsearch.source_run": point["run_id"] or "",
        "method": cfg.method}).info.run_id
    tracker.log_params(rid, cfg.to_dict())
    tracker.log_metric_steps(rid, [({k: v for k, v in m.items() if isinstance(v, (int, float)) and "/" in k}, m["epoch"])
                                   for m in res.history])
    tracker.log_text(rid, dump(cfg), "config.yaml")
    rows = [r.__dict__ for r in res.cost_rows]
    tracker.log_json(rid, {"rows": rows, "totals": {k: v for k, v in res.final.items() if k.startswith("cost/")}}, "cost.json")
    # The registry: --registry-uri, else MLFLOW_REGISTRY_URI, else the study's own store (where
    # evaluate and export look too).
    from .tracking import mlflow_uris, registry_store

    registry = registry_store(tracker.uri, registry_uri)
    with mlflow_uris(tracker.uri, registry), mlflow.start_run(run_id=rid):
        # MLflow's default format here is pt2 (torch.export): a traced graph of the eval-mode
        # network that loads without bnnsearch; the config rides along in the metadata.
        info = mlflow.pytorch.log_model(model, name="model", signature=infer_signature(x_np, y), input_example=x_np,
                                        registered_model_name=name,
                                        metadata={"bnnsearch_config": cfg.to_dict(), "bnnsearch_in_shape": list(model.in_shape),
                                                  "bnnsearch_num_classes": model.num_classes,
                                                  "bnnsearch_scalars": module_scalars(model.net)},
                                        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    tracker.finish(rid)
    version = info.registered_model_version
    return {"name": name, "version": version, "model_uri": f"models:/{name}/{version}", "run_id": rid,
            "registry_uri": registry,
            "test/acc": res.final["test/acc"], "trial_test_acc": _recorded(tracker, point["run_id"], "test/acc"),
            "mem_bits": res.final.get("cost/mem_bits")}


def _recorded(tracker, run_id: str | None, key: str) -> float | None:
    if not run_id:
        return None
    return tracker.client.get_run(run_id).data.metrics.get(key)
