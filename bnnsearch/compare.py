"""``bnnsearch compare``: hyperparameter efficiency across methods (seed 002, Fig. 8, for any
set of methods). For each search space, R independent studies of T trials with the same data,
splits and epochs, different sampler seeds and the same number of startup trials; then
best-so-far curves with 95 % bands, trials-to-target, area under the curve, best configs, CPU
time and a rank test (``efficiency.py``). No arm gets its paper defaults as a free first trial
(a method whose defaults lie outside its space would be handicapped); every arm starts with the
same number of random startup trials (or, with ``--startup-trials ax``, Ax's default initial
design per space, to measure what that asymmetry does). Curves are read back from the tracking store (each
study's parent run logs its trial values in completion order), so a rerun with ``--resume``
skips finished studies and continues interrupted ones.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

from .efficiency import (RANDOM_SUFFIX, asha_rungs, cost_to_target, gap_target, incumbent_test, mean_band,
                         method_stats, own_gap_ttt, pad_budget, paired_test, pairwise_paired, rank_test, rung_correlations,
                         target_value, test_metric, ttt_text)
from . import interrupts
from .errors import Interrupted, UserError
from .plots import efficiency_plots
from .runio import check_out_dir, check_out_owner, write_text_whole
from .spaces import SearchSpace
from .sweep import SweepArgs, check_args, recorded_differences, run_sweep

NOISE_CACHE = "noise_floor_runs.json"  # in --out: each noise-floor re-training's value, kept for --resume
PACKS_HINT = "give distinct pack sizes >= 1, comma-separated (e.g. 1,8)"  # in --packs errors (cli parses them)


def _study_values(tracker, parent_id: str, trials: int, multi: bool = False) -> list[float | None]:
    """A study's values by trial index: its trial values, or (several objectives) the
    hypervolume of its feasible full-budget trials after each trial (a non-decreasing curve)."""
    from .tracking import study_values

    if multi:
        hv = tracker.steps(parent_id, "hypervolume")
        return pad_budget([hv.get(k) for k in range(1, max(hv, default=0) + 1)], trials)
    return pad_budget(study_values(tracker.client, parent_id), trials)


def _by_index(children: list, key: str | None, trials: int) -> list[float | None]:
    """Each trial's ``key`` metric (e.g. test/acc, or time/total_s) at its last epoch, by trial
    index, from a study's child runs."""
    if key is None:
        return [None] * trials
    from .record import MlflowCallback

    by_index = {}
    for r in children:
        k = r.data.tags.get(MlflowCallback.INDEX)
        if k is not None:
            by_index[int(k)] = r.data.metrics.get(key)
    return [by_index.get(i) for i in range(1, trials + 1)]


def _train_gates(tracker, children: list, trials: int) -> tuple[list[float | None], int]:
    """Each trial's modelled training cost (``cost/train_gates``) at its last epoch, by trial
    index, and how many were computed: a trial that trained (it has ``time/total_s``) in a version
    that did not report the metric gets it from its recorded config and the epochs it trained
    (``engine.planned_train_gates``: the number the run reports, tested equal)."""
    from .config import resolve, safe_load
    from .engine import planned_train_gates
    from .record import MlflowCallback

    by_index, computed = {}, 0
    for r in children:
        k = r.data.tags.get(MlflowCallback.INDEX)
        if k is None:
            continue
        v = r.data.metrics.get("cost/train_gates")
        if v is None and "time/total_s" in r.data.metrics and "epoch" in r.data.metrics:
            cfg = resolve(safe_load(tracker.download_text(r.info.run_id, "config.yaml")), f"run {r.info.run_id}")
            v, computed = planned_train_gates(cfg, int(r.data.metrics["epoch"]))[0], computed + 1
        by_index[int(k)] = v
    return [by_index.get(i) for i in range(1, trials + 1)], computed


def noise_floor(config_yaml: str, metric: str, seeds: int, cache: Path | None = None) -> dict:
    """Re-train one configuration with ``seeds`` other seeds (in this process, no Ray): the
    seed-to-seed spread of its final ``metric`` is the noise floor that differences between arms
    and targets must clear. With ``cache`` (a JSON file) each re-training's value is saved as it
    ends, keyed by the configuration's text, seed and metric, and one found there is not trained
    again: an interrupted comparison's --resume keeps the re-trainings it already paid for."""
    import hashlib
    import statistics

    from .config import resolve, safe_load
    from .engine import fit

    raw = safe_load(config_yaml)
    base_seed = int(raw.get("seed", 0))
    sha = hashlib.sha256(config_yaml.encode()).hexdigest()[:16]
    done = _read_json(cache) if cache is not None else {}
    values, used = [], []
    for k in range(1, seeds + 1):
        seed = base_seed + 1000 * k  # never the seed the study trained
        key = f"{sha}:{seed}:{metric}"
        if key not in done:
            res = fit(resolve({**raw, "seed": seed}, "best config"))
            done[key] = float(res.final.get(metric, math.nan))
            if cache is not None:  # whole or not at all: a Ctrl-C mid-write must not lose the others
                write_text_whole(cache, json.dumps(done, indent=1))
        values.append(done[key])
        used.append(seed)
    finite = [v for v in values if math.isfinite(v)]
    return {"seeds": used, "values": values, "mean": statistics.fmean(finite) if finite else math.nan,
            "std": statistics.stdev(finite) if len(finite) > 1 else math.nan}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot read the saved noise-floor re-trainings ({e}); delete the file to "
                        "train them again") from None


def _training_seconds(children: list) -> float:
    """A study's training seconds: every trial's engine time (``time/total_s``), from its child runs."""
    return sum(k.data.metrics.get("time/total_s", 0.0) for k in children)


def study_name(cmp_name: str, arm: str, r: int) -> str:
    """The study of repeat r (from 0) of an arm of a comparison."""
    return f"{cmp_name}-{arm.replace('@', '-')}-r{r}"


def compare_progress(uri: str | None, experiment: str, cmp_name: str, arms: list[str], repeats: int, trials: int,
                     concurrency: int, noise_seeds: int = 0, check=None) -> dict:
    """How far a comparison has got, read from its MLflow store (nothing trains, nothing is
    created): per arm the finished studies, the trials recorded by an unfinished one, and the
    training seconds (the trials' ``time/total_s``) spent so far; and an estimate of what is left:
    each arm's unfinished studies at the mean of its finished ones, less what an unfinished study
    already spent, divided by ``concurrency`` for wall time; and the noise floor's re-trainings
    after them (``noise_seeds`` per arm, one at a time: ``noise_floor_s``). No values: an
    unfinished comparison is not summarised. ``check(parent, r, arm)`` raises for a recorded
    study that is not the one this command would run (other flags or space)."""
    from .record import MlflowCallback
    from .tracking import Tracker, read_store

    uri, client = read_store(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"--status: no comparison {cmp_name!r} in {uri} (no experiment {experiment!r}); "
                        "give the same spaces and flags as the command that runs it")
    tracker = Tracker.from_client(client, exp.experiment_id)
    rows, spent, left, unknown = [], 0.0, 0.0, []
    for arm in arms:
        done, partial, secs, arm_spent = [], [], [], 0.0
        for r in range(repeats):
            parent = tracker.find_study(study_name(cmp_name, arm, r))
            if parent is None:
                continue
            if check is not None:
                check(parent, r, arm)
            kids = tracker.child_runs(parent.info.run_id)
            t = _training_seconds(kids)
            arm_spent += t
            if parent.info.status == "FINISHED":
                done.append(r)
                secs.append(t)
            else:
                n = sum(MlflowCallback.INDEX in k.data.tags for k in kids)  # trials recorded as ended
                partial.append({"repeat": r + 1, "trials": n, "status": parent.info.status})
        mean = sum(secs) / len(secs) if secs else None
        if mean is not None:  # what its unfinished studies already spent is part of what they cost
            left += max(0.0, (repeats - len(done)) * mean - (arm_spent - sum(secs)))
        elif len(done) < repeats:
            unknown.append(arm)
        spent += arm_spent
        rows.append({"arm": arm, "finished": len(done), "repeats": repeats, "unfinished": partial,
                     "training_s": arm_spent, "mean_s_per_finished_study": mean})
    n_done = sum(r["finished"] for r in rows)
    return {"name": cmp_name, "experiment": experiment, "tracking_uri": uri, "arms": rows, "trials": trials,
            "studies": len(arms) * repeats, "finished": n_done, "training_s": spent,
            "left_training_s": None if unknown else left,
            "left_wall_s": None if unknown or not concurrency else left / concurrency,
            "no_estimate": unknown, "concurrency": concurrency, "noise_seeds": noise_seeds,
            "noise_floor_s": None if unknown else noise_floor_s(rows, trials, noise_seeds)}


def noise_floor_s(arms: list[dict], trials: int, seeds: int) -> float:
    """The noise floor's re-trainings, estimated: ``seeds`` re-trainings of each arm's best
    configuration, one after another, each at its arm's mean training seconds per trial (its
    finished studies' mean over ``trials``). Re-trainings already cached are not subtracted."""
    return float(seeds * sum(a["mean_s_per_finished_study"] / trials for a in arms
                             if a["mean_s_per_finished_study"] is not None))


_STATE = {"RUNNING": "running, or stopped by a kill", "KILLED": "interrupted", "FAILED": "failed"}


def progress_report(p: dict) -> str:
    from .textui import table

    def unfinished(u):
        return f"repeat {u['repeat']}: {u['trials']}/{p['trials']} trials ({_STATE.get(u['status'], u['status'])})"

    rows = [[r["arm"], f"{r['finished']}/{r['repeats']}", ", ".join(map(unfinished, r["unfinished"])) or "-",
             _secs(r["training_s"]), "-" if r["mean_s_per_finished_study"] is None else _secs(r["mean_s_per_finished_study"])]
            for r in p["arms"]]
    done = p["finished"] == p["studies"]
    lines = [f"comparison {p['name']!r}: {p['finished']} of {p['studies']} studies finished ({len(p['arms'])} arms x "
             f"{p['arms'][0]['repeats']} repeats, {p['trials']} trials each); "
             + ("all finished: the same command without --status writes its summary" if done else
                "its summary is written when all are"),
             table(rows, ["arm", "finished", "unfinished study", "training s", "training s per finished study"],
                   align_right={3, 4})]
    if p["no_estimate"]:
        left = "no estimate of what is left: no finished study yet for " + ", ".join(p["no_estimate"])
    elif done:
        left = "no study left"
    else:
        left = f"about {_secs(p['left_training_s'])} training s left (the finished studies' mean per arm)"
        if p["left_wall_s"] is None:  # a cluster whose size this command does not know
            left += "; give --concurrency for a wall-time estimate"
        else:
            left += f", about {_duration(p['left_wall_s'])} at {p['concurrency']} trials at once"
    if p["noise_seeds"] and p["noise_floor_s"] is not None:
        left += (f"; then the noise floor, {p['noise_seeds']} re-trainings of each arm's best configuration one at a "
                 f"time: about {_duration(p['noise_floor_s'])} (at each arm's mean trial seconds; any already "
                 "cached in --out are not trained again)")
    lines.append(f"training seconds so far: {_secs(p['training_s'])}; {left}")
    return "\n".join(lines)


def _secs(s: float) -> str:
    """Seconds as the status table prints them: 1,500 / 42 / 0.41 (a short study is not '0')."""
    return f"{s:,.0f}" if s >= 10 else f"{s:.2g}"


def _duration(s: float) -> str:
    """A wall-time estimate: '40 s', '12 min', '1.2 h'."""
    return f"{s:.0f} s" if s < 60 else f"{s / 60:.0f} min" if s < 3600 else f"{s / 3600:.1f} h"


def noise_warnings(margin: float, best: dict[str, float], floors: dict[str, dict]) -> list[str]:
    """Where the target's margin (how far below the best arm's final value it lies, in the
    metric's units) is within the noise floor, and which arms' best values are closer than twice
    the seed-to-seed spread of a difference of two re-trainings (sqrt(sd_a^2 + sd_b^2)): one
    line listing those pairs, each with its gap and bound."""
    sds = {m: f["std"] for m, f in floors.items() if math.isfinite(f["std"])}
    if not sds:
        return []
    out = []
    if margin < max(sds.values()):
        out.append(f"the target margin ({margin:.4g}) is below the seed-to-seed spread of a best config (sd up to "
                   f"{max(sds.values()):.4g}): reaching the target partly measures luck")
    arms = sorted(a for a in best if a in sds and math.isfinite(best[a]))
    close = []
    for i, a in enumerate(arms):
        for b in arms[i + 1:]:
            gap, bound = abs(best[a] - best[b]), 2 * math.hypot(sds[a], sds[b])
            if gap < bound:
                close.append(f"{a} ~ {b} ({gap:.3g} < {bound:.3g})")
    if close:
        out.append(f"{len(close)} of {len(arms) * (len(arms) - 1) // 2} pairs of arms have best values closer than "
                   "twice the seed-to-seed spread of their difference: " + ", ".join(close))
    return out


def run_compare(spaces: list[SearchSpace], base: SweepArgs, repeats: int, delta: float, out: str | Path,
                name: str | None = None, allow_mixed: bool = False, random_arm: bool = False,
                noise_seeds: int = 0, target_gap: float | None = None, samplers: list[str] | None = None,
                ax_design: bool = False, packs: list[int] | None = None, status: bool = False) -> dict:
    """``random_arm``: every method also runs its space with random search (arm ``<method>@random``,
    same seeds and budget): a method's efficiency relative to random search says how much its
    sampler's model helps, i.e. how easy the method is to tune. ``noise_seeds``: each arm's best
    config is re-trained with that many other seeds (the noise floor). ``samplers``: every space
    runs with each of these samplers, arm ``<method>@<sampler>`` (e.g. an AutoML space under
    ``tpe`` and ``tpe-flat``), and the rank test is between all arms. ``ax_design``: each space
    gets Ax's default number of random startup trials, max(5, 2·d) (``--startup-trials ax``;
    methods.md §7.2) instead of ``base.startup_trials``, so an arm with more hyperparameters
    starts its model later — the initial design the Figure 8 ablation measures. ``packs``: every
    space runs with each of these pack sizes, arm ``<method>@pack<K>`` (``--packs 1,8``: what
    packing's batches of K proposals cost a model-based sampler in trials, at the same seeds and
    budget); with ``random_arm`` each method's ``<method>@random`` arm is the reference of each
    of its pack arms.

    Multi-objective spaces (AutoML) compare the hypervolume of each study after each trial
    (mode max; the target defaults to ``--target-gap 0.9``, a delta in hypervolume units means
    little); every space must have the same objectives and reference point.

    ``status``: train nothing; return how far the comparison has got (``compare_progress``).
    """
    from .searcher import SAMPLERS
    from .tracking import Tracker

    metrics = {(s.objectives, s.refs, s.constraints, s.log_axes) for s in spaces}
    if len(metrics) > 1:
        def judged(s) -> str:  # what a space's studies are judged by, as a user wrote it
            refs = f"; references {', '.join(f'{r:g}' for r in s.refs)}" if s.refs else ""
            limits = "; limits " + ", ".join(f"{m} {kind} {b:g}" for m, kind, b in s.constraints) if s.constraints else ""
            return f"{s.path}: {s.objectives_text()}{refs}{limits}"

        raise UserError("compare judges every space by the same objectives, references and limits; these differ: "
                        + " | ".join(judged(s) for s in spaces))
    methods = [s.arm for s in spaces]  # each space's arm: its name:, else its method
    if twice := sorted({m for m in methods if methods.count(m) > 1}):
        arm, files = twice[0], ", ".join(s.path for s in spaces if s.arm == twice[0])
        raise UserError(f"two spaces are both arm {arm!r} ({files}): give each a distinct name: in its file "
                        f"(e.g. name: {arm}-a), which names its studies and its row in the summary")
    for smp in samplers or []:
        if smp not in SAMPLERS:
            raise UserError(f"--samplers {','.join(samplers)}: {smp!r} is not a sampler ({', '.join(SAMPLERS)})")
    if samplers is not None and (not samplers or len(set(samplers)) != len(samplers)):
        raise UserError("--samplers: give distinct sampler names, comma-separated (e.g. tpe,tpe-flat)")
    if packs is not None and (not packs or len(set(packs)) != len(packs) or min(packs) < 1):
        raise UserError(f"--packs {','.join(map(str, packs))}: {PACKS_HINT}")
    if packs and samplers:
        raise UserError("--packs and --samplers: give one of them (arms differ in one thing)")
    multi = spaces[0].multi
    if multi and target_gap is None:
        target_gap = 0.9
    if multi and noise_seeds:
        raise UserError(f"--noise-seeds {noise_seeds}: a noise floor of a hypervolume is not defined (it is a "
                        "property of a whole study); use it with one objective")
    if repeats < 1:
        raise UserError(f"--repeats {repeats}: must be >= 1")
    if target_gap is not None and not 0 < target_gap <= 1:
        raise UserError(f"--target-gap {target_gap:g}: must lie in (0, 1] (the fraction of the gap to close)")
    if noise_seeds < 0 or noise_seeds == 1:
        raise UserError(f"--noise-seeds {noise_seeds}: 0 (off) or >= 2 (a spread needs two values)")
    if not delta >= 0:
        raise UserError(f"--target-delta {delta:g}: must be >= 0 (the target lies this far below the best value)")
    data = {s.path: (c.data, c.data_args) for s in spaces for c in [s.config(s.low_point(), where=s.path)]}
    if len(set(map(repr, data.values()))) > 1 and not allow_mixed:
        seen = "; ".join(f"{p}: {d} {a or ''}".rstrip() for p, (d, a) in data.items())
        raise UserError(f"the spaces train on different data ({seen}): their values are not comparable; "
                        "make data and data_args equal, or pass --allow-mixed")
    metric, mode = ("hypervolume", "max") if multi else (spaces[0].metric, spaces[0].mode)
    cmp_name = name or "compare-" + "-".join(methods) + ("-" + "-".join(samplers) if samplers else "") + (
        "".join(f"-pack{k}" for k in packs) if packs else "")
    experiment = base.experiment or f"bnnsearch-compare/{cmp_name}"
    # (arm, space, sampler, pack); pack 0 is --pack (or the space file's pack:)
    if samplers:
        arms = [(f"{s.arm}@{smp}", s, smp, base.pack) for s in spaces for smp in samplers]
        methods = [arm for arm, *_ in arms]  # the rank test is between every arm
    elif packs:
        arms = [(f"{s.arm}@pack{k}", s, base.sampler, k) for s in spaces for k in packs]
        methods = [arm for arm, *_ in arms]
    else:
        arms = [(s.arm, s, base.sampler, base.pack) for s in spaces]
    if random_arm and base.sampler != "random" and not samplers:
        arms += [(s.arm + RANDOM_SUFFIX, s, "random", base.pack) for s in spaces]
    # each arm's random-search reference: <method>@random (a pack arm's too)
    ref = {m: m.split("@")[0] + RANDOM_SUFFIX for m in methods}
    startup = {arm: space.ax_startup_trials() if ax_design else base.startup_trials for arm, space, *_ in arms}
    for arm, space, sampler, pack in arms:  # every study's flags, before anything is printed or created
        check_args(replace(base, space=space, sampler=sampler, startup_trials=startup[arm], pack=pack))
    arm_of = {arm: (space, sampler, pack) for arm, space, sampler, pack in arms}

    def study_args(r: int, arm: str) -> SweepArgs:
        space, sampler, pack = arm_of[arm]
        # No seeded default trial: every arm starts from the same kind of initial design.
        return replace(base, space=space, sampler=sampler, seed=base.seed + r, name=study_name(cmp_name, arm, r),
                       startup_trials=startup[arm], pack=pack, experiment=experiment, quiet=True, seed_defaults=False,
                       label=f"{space.arm} {sampler} r{r}" + (f" pack{pack}" if packs else ""))

    def check_recorded(parent, r: int, arm: str) -> None:
        """A study recorded under this comparison's name counts only if it is the study this
        command would run (the same space and flags): a rerun with --trials 6 counted 3-trial
        studies as 6-trial ones, one with another --sampler the first sampler's studies as its own."""
        changed = recorded_differences(parent, study_args(r, arm))
        if changed:
            raise UserError(f"comparison {cmp_name!r}: its study {study_name(cmp_name, arm, r)!r} was run with "
                            f"{'; '.join(changed)}; give the spaces and flags it was run with, or --name for a new "
                            "comparison")

    if status:
        concurrency = base.concurrency
        if not concurrency and not base.address:  # the local Ray a run would start: as many as its CPUs allow
            from .sweep import _local_resources, trials_at_once

            concurrency = trials_at_once(base, _local_resources(base)["CPU"])
        return compare_progress(base.tracking_uri, experiment, cmp_name, [arm for arm, *_ in arms], repeats,
                                base.trials, concurrency, noise_seeds, check_recorded)
    out = Path(out or f"runs/{cmp_name}")
    check_out_owner(out, "summary.json", "name", cmp_name, "comparison", f"--out {out}")
    check_out_dir(out, f"--out {out}", create=True)
    tracker = Tracker(base.tracking_uri, experiment)
    for r in range(repeats):  # before any study runs
        for arm in arm_of:
            if (parent := tracker.find_study(study_name(cmp_name, arm, r))) is not None:
                check_recorded(parent, r, arm)
    t0 = time.time()
    per_method: dict[str, list[list[float | None]]] = {}
    tests: dict[str, list[list[float | None]]] = {}  # each trial's held-out value, by trial index
    seconds: dict[str, list[list[float | None]]] = {}  # each trial's training seconds, by trial index
    proc_cpu: dict[str, list[list[float | None]]] = {}  # each trial's measured process CPU seconds, by index
    gates: dict[str, list[list[float | None]]] = {}  # each trial's modelled training gates, by index
    gates_computed: dict[str, int] = {}  # ... of which computed from the trial's config (not recorded)
    histories: dict[str, list[dict[int, float]]] = {}
    test_key = test_metric(metric)
    cpu: dict[str, float] = {}
    gpu: dict[str, float] = {}
    parents: dict[str, list[str]] = {}
    best_cfg: dict[str, tuple[float, str]] = {}
    first = min(startup.values())  # every arm's first trials are random: a random config's median
    for arm, *_ in arms:
        per_method[arm], cpu[arm], gpu[arm], parents[arm], tests[arm], seconds[arm] = [], 0.0, 0.0, [], [], []
        histories[arm], proc_cpu[arm], gates[arm], gates_computed[arm] = [], [], [], 0
    # Repeat-major order (r0 of every arm, then r1, ...): an interrupted comparison leaves the
    # arms balanced, and --resume continues where it stopped.
    try:
        for r in range(repeats):
            for arm, space, sampler, pack in arms:
                interrupts.check()  # a Ctrl-C between two studies
                study = study_name(cmp_name, arm, r)
                parent = tracker.find_study(study)
                if parent is None or parent.info.status != "FINISHED":
                    if parent is not None and not base.resume:
                        raise UserError(f"study {study!r} was interrupted; rerun the same command with --resume")
                    print(f"== {arm}: repeat {r + 1}/{repeats} (sampler {sampler}, seed {base.seed + r})", flush=True)
                    try:
                        run_sweep(replace(study_args(r, arm), resume=parent is not None))
                    except Interrupted as e:  # nothing after it runs; --resume continues this study first
                        raise Interrupted(f"comparison {cmp_name!r} stopped in {e}", cmp_name) from None
                    parent = tracker.find_study(study)
                else:
                    print(f"== {arm}: repeat {r + 1}/{repeats} already finished, skipped", flush=True)
                pid = parent.info.run_id
                parents[arm].append(pid)
                per_method[arm].append(_study_values(tracker, pid, base.trials, multi))
                kids = tracker.child_runs(pid)  # read once: values by index, seconds, histories
                tests[arm].append(_by_index(kids, test_key, base.trials))
                seconds[arm].append(_by_index(kids, "time/total_s", base.trials))
                proc_cpu[arm].append(_by_index(kids, "time/total_cpu_s", base.trials))
                g, n = _train_gates(tracker, kids, base.trials)
                gates[arm].append(g)
                gates_computed[arm] += n
                if base.scheduler == "asha":  # per-epoch objective of the full-budget trials
                    histories[arm] += [{m.step: m.value for m in tracker.client.get_metric_history(k.info.run_id,
                                                                                                    "objective")}
                                       for k in kids if k.data.tags.get("bnnsearch.status") == "complete"]
                secs = _training_seconds(kids)
                cpu[arm] += secs * base.cpus_per_trial
                gpu[arm] += secs * base.gpus_per_trial
                bv = parent.data.tags.get("best_value")
                if bv is not None and (arm not in best_cfg or (float(bv) > best_cfg[arm][0]) == (mode == "max")):
                    best_cfg[arm] = (float(bv), pid)
        interrupts.check()  # a Ctrl-C as the last study wrote its record: no summary of a stopped command
    except KeyboardInterrupt:  # a Ctrl-C between two studies (inside one, run_sweep raises Interrupted)
        raise Interrupted(f"comparison {cmp_name!r} interrupted between studies; the finished ones are kept",
                          cmp_name) from None
    # after the studies: the statistics and the noise floor (its re-trainings are kept as they end)
    try:
        all_values = [v for studies in per_method.values() for s in studies for v in s]
        if not any(v is not None and math.isfinite(v) for v in all_values):
            raise UserError(f"comparison {cmp_name!r}: no trial of any study reached a full-budget value, so no target "
                            f"can be defined (see the trials' errors in MLflow experiment {experiment!r})")
        if target_gap is None:
            target, target_rule = target_value(all_values, mode, delta, metric), {
                "rule": "delta", "description": f"best of all studies minus {delta} points"}
        else:
            target, info = gap_target(per_method, mode, target_gap, first)
            target_rule = {"rule": "gap", **info, "description": (
                f"{target_gap:g} of the way from a random config's median ({info['random_median']:.4g}) to the best "
                f"arm's median final value ({info['best_arm']}: {info['best_arm_median']:.4g})")}
        finite = [v for v in all_values if v is not None and math.isfinite(v)]
        floor = (min(finite) if mode == "max" else max(finite)) if finite else None
        stats = {m: method_stats(m, studies, target, mode, floor) for m, studies in per_method.items()}
        # Hyperparameters each method is tuned over: only those a trial samples (conditional spaces).
        active = {arm: s.active_range() for arm, s, *_ in arms}
        # The rank test is between the methods; each method's random-search arm is tested against it.
        test = rank_test({m: stats[m].ttt for m in methods}, base.trials)
        vs_random = {m: {**rank_test({m: stats[m].ttt, ref[m]: stats[ref[m]].ttt}, base.trials),
                         "auc_minus_random": stats[m].auc_mean - stats[ref[m]].auc_mean,
                         "paired": paired_test({m: stats[m].aucs, ref[m]: stats[ref[m]].aucs})}
                     for m in methods if ref[m] in stats and ref[m] != m}
        # With a gap target, also each method against its own plateau: how much tuning it needs to get
        # where it gets (read beside its final value).
        own = own_gap_ttt(per_method, mode, target_gap, first) if target_rule["rule"] == "gap" else {}
        own_test = rank_test({m: own[m]["ttt"] for m in methods if m in own}, base.trials) if own else None
        for m in methods:
            if m in own and ref[m] in own and ref[m] != m:
                own[m]["vs_random"] = rank_test({m: own[m]["ttt"], ref[m]: own[ref[m]]["ttt"]}, base.trials)
        # Repeat r of every arm shares its sampler seed and data: the per-repeat AUCs are paired.
        paired = paired_test({m: stats[m].aucs for m in methods})
        # What a study would deliver: the held-out value of its pick after t trials (mean and band).
        incumbent = {m: [incumbent_test(v, t, mode) for v, t in zip(per_method[m], tests[m])] for m in per_method}
        inc_band = {m: mean_band(c) for m, c in incumbent.items()}
        # ... and each study's pick after the whole budget, compared repeat by repeat (what a user of
        # one study gets; free of the best-of-N validation bias): all methods, every pair (Holm), and
        # each method against its random-search arm. Every pair of methods' AUCs too.
        picks = {m: [c[-1] if c else math.nan for c in incumbent[m]] for m in per_method}
        pick_test = None if test_key is None else {
            "metric": test_key, "paired": paired_test({m: picks[m] for m in methods}),
            "pairwise": pairwise_paired({m: picks[m] for m in methods}, mode) if len(methods) > 2 else []}
        for m, vr in vs_random.items() if test_key is not None else ():
            vr["pick_paired"] = paired_test({m: picks[m], ref[m]: picks[ref[m]]})
        pairwise_auc = pairwise_paired({m: stats[m].aucs for m in methods}, mode) if len(methods) > 2 else []
        # Efficiency against cost: CPU seconds of training spent until the target was reached.
        stt = {m: [None if c is None else c * base.cpus_per_trial for c in
                   (cost_to_target(v, t, target, mode) for v, t in zip(per_method[m], seconds[m]))] for m in per_method}
        # ... and the CPU seconds the trial processes measured (which other work inflates far less)
        pct = {m: measured_cost_to_target(per_method[m], proc_cpu[m], seconds[m], target, mode) for m in per_method}
        # ... and the modelled training cost (cost.py: Boolean gates, one unit for every method)
        gtt = {m: measured_cost_to_target(per_method[m], gates[m], seconds[m], target, mode) for m in per_method}
        best_yaml = {m: tracker.download_text(best_cfg[m][1], "best_config.yaml") for m in best_cfg}
        floors = {}
        for m in best_yaml if noise_seeds else []:
            print(f"== noise floor: {m}'s best config with {noise_seeds} other seeds", flush=True)
            floors[m] = noise_floor(best_yaml[m], metric, noise_seeds, cache=out / NOISE_CACHE)
    except KeyboardInterrupt:
        raise Interrupted(f"comparison {cmp_name!r} interrupted after its studies; they and the noise-floor "
                          f"re-trainings done so far ({out / NOISE_CACHE}) are kept", cmp_name) from None
    # the target's margin below the best arm's final value, in the metric's units
    margin = (abs(target_rule["best_arm_median"] - target) if target_rule["rule"] == "gap"
              else delta / 100.0 if metric.endswith("/acc") else delta)
    warnings = noise_warnings(margin, {m: stats[m].best_value for m in floors}, floors)
    # With ASHA: does a trial's value at each rung predict its final value? (per arm)
    rungs = {arm: rung_correlations(histories[arm], asha_rungs(ep), ep)
             for arm, sp, *_ in arms for ep in [sp.config(sp.low_point(), where=sp.path).epochs]
             } if base.scheduler == "asha" else {}
    summary = {
        "name": cmp_name, "metric": metric, "mode": mode, "repeats": repeats, "trials": base.trials,
        "sampler": ",".join(samplers) if samplers else base.sampler, "startup_trials": first,
        **({"packs": packs} if packs else {}),
        "initial_design": "ax" if ax_design else "fixed", "target_delta": delta, "target": target,
        "target_rule": target_rule,
        "rank_test": test, "paired_test": paired, "pairwise_auc": pairwise_auc, "pick_test": pick_test,
        "own_target_test": own_test, "seconds": time.time() - t0, "experiment": experiment, "tracking_uri": tracker.uri,
        "methods": {m: {**{k: v for k, v in asdict(s).items() if k not in ("mean", "low", "high")},
                        "space": arm_of[m][0].path, "training_method": arm_of[m][0].method,
                        "hyperparameters": {"active_min": active[m][0], "active_max": active[m][1]},
                        "startup_trials": startup[m],
                        "incumbent_test": {"metric": test_key, "mean": inc_band[m][0], "low": inc_band[m][1],
                                           "high": inc_band[m][2], "final_mean": inc_band[m][0][-1]},
                        "cpu_seconds": cpu[m], "gpu_seconds": gpu[m], "study_runs": parents[m],
                        "vs_random": vs_random.get(m), "own_target": own.get(m),
                        "asha_rung_spearman": rungs.get(m),
                        "cpu_seconds_to_target": stt[m],
                        "cpu_seconds_to_target_median": _median_censored(stt[m]),
                        "process_cpu_seconds_to_target": pct[m],
                        "process_cpu_seconds_to_target_median": None if pct[m] is None else _median_censored(pct[m]),
                        "train_gates_to_target": gtt[m],
                        "train_gates_to_target_median": None if gtt[m] is None else _median_censored(gtt[m]),
                        "train_gates_computed": gates_computed[m],
                        "noise_floor": floors.get(m), "best_config": best_yaml.get(m)}
                    for m, s in stats.items()},
        "noise_warnings": warnings,
    }
    # The outputs are written whole (a Ctrl-C here is remembered; the command then exits 130):
    # no half-written summary, no comparison run left RUNNING.
    with interrupts.held():
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_json))
        with open(out / "curves.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["method", "repeat", "trial", "value", "best_so_far", "mean", "band_low", "band_high",
                        "boot_low", "boot_high", "test_value", "incumbent_test", "incumbent_test_mean", "trial_seconds",
                        "trial_cpu_seconds", "trial_train_gates"])
            from .efficiency import best_so_far

            for m, studies in per_method.items():
                st = stats[m]
                for r, s in enumerate(studies):
                    for i, (v, b) in enumerate(zip(s, best_so_far(s, mode)), 1):
                        w.writerow([m, r, i, v, b, st.mean[i - 1], st.low[i - 1], st.high[i - 1], st.boot_low[i - 1],
                                    st.boot_high[i - 1], tests[m][r][i - 1],
                                    incumbent[m][r][i - 1], inc_band[m][0][i - 1], seconds[m][r][i - 1],
                                    proc_cpu[m][r][i - 1], gates[m][r][i - 1]])
        plots = efficiency_plots(stats, per_method, target, summary, out, gates)
        cmp_run = tracker.start_study(cmp_name, tags={"bnnsearch.kind": "comparison", "methods": ",".join(methods),
                                                     "study_runs": json.dumps(parents), "verdict": test["verdict"]},
                                      params={"repeats": repeats, "trials": base.trials, "sampler": base.sampler,
                                              "startup_trials": first, "target_delta": delta,
                                              **({"initial_design": "ax"} if ax_design else {}),
                                              **({"packs": ",".join(map(str, packs))} if packs else {}),
                                              **({"target_gap": target_gap} if target_gap is not None else {})})
        tracker.set_tags(cmp_run, {"bnnsearch.kind": "comparison"})
        tracker.finish(cmp_run)  # finished before the export, so the dashboard shows this comparison
        from dashboards import build_html

        (out / "dashboard.html").write_text(build_html(tracker.uri))
        (out / "summary.md").write_text(compare_report(summary, markdown=True) + "\n")
        for p in [out / "summary.json", out / "summary.md", out / "curves.csv", *plots, out / "dashboard.html"]:
            tracker.client.log_artifact(cmp_run, str(p))
    summary["comparison_run_id"] = cmp_run
    summary["out"] = str(out)
    summary["plots"] = [str(p) for p in plots]
    return summary


def compare_report(s: dict, markdown: bool = False) -> str:
    """What a comparison found: the per-arm table, each arm against random search, ASHA rung
    correlations, the noise floor and its warnings, the target and the tests. Plain text for the
    terminal, or Markdown (``summary.md``, for write-ups: the findings as a list)."""
    from .textui import table

    rows = []
    for m, st in s["methods"].items():
        hp = st["hyperparameters"]
        n_hp = f"{hp['active_min']}" if hp["active_min"] == hp["active_max"] else f"{hp['active_min']}-{hp['active_max']}"
        inc = st["incumbent_test"]["final_mean"]
        rows.append([m, n_hp, f"{st['repeats']}x{st['budget']}", st["best_value"],
                     "-" if inc is None or (isinstance(inc, float) and math.isnan(inc)) else inc,
                     f"{st['auc_mean']:.4g} [{st['auc_ci'][0]:.3g}, {st['auc_ci'][1]:.3g}]",
                     ttt_text(st["ttt_median"], st["ttt_q1"], st["ttt_q3"], st["budget"], st.get("ttt_bounds")), f"{st['reached']}/{st['repeats']}",
                     "-" if st["cpu_seconds_to_target_median"] is None else f"{st['cpu_seconds_to_target_median']:.3g}",
                     st["cpu_seconds"]])
        if s.get("own_target_test"):
            ot = st.get("own_target") or {}
            rows[-1].insert(8, f"{ttt_text(ot['median'], ot['q1'], ot['q3'], st['budget'], ot.get('bounds'))} ({ot['reached']}/{st['repeats']})"
                            if ot else "-")
    test_key = next(iter(s["methods"].values()))["incumbent_test"]["metric"] or "held-out"
    cols = ["method", "HPs", "studies", f"best {s['metric']}", f"{test_key} of pick", "AUC [95% bootstrap]",
            "trials-to-target median [IQR]", "reached", "alloc. CPU s to target", "alloc. CPU s"]
    own = s.get("own_target_test")
    if own:
        cols.insert(8, "to own target median [IQR] (reached)")
    head = table(rows, cols, align_right={3, 4, 9, 10} if own else {3, 4, 8, 9}, markdown=markdown)
    notes: list[str] = []  # the findings below the table
    for m, st in s["methods"].items():
        vr = st.get("vs_random")
        if vr:
            p = vr["p_value"]
            pt = vr.get("paired") or {}
            paired = (f"; AUC paired by repeat ({pt['test']}, {pt['n_pairs']} pairs): p = {pt['p_value']:.3g} -> "
                      f"{pt['verdict']}" if pt.get("test") else "")
            ov = (st.get("own_target") or {}).get("vs_random")
            if ov:
                paired += (f"; to own target {ov['test']}: p = "
                           f"{'n/a' if ov['p_value'] is None else format(ov['p_value'], '.3g')} -> {ov['verdict']}")
            pk = vr.get("pick_paired") or {}
            if pk.get("test"):
                paired += f"; pick's held-out value paired: p = {pk['p_value']:.3g} -> {pk['verdict']}"
            notes.append(f"{m} vs random search: AUC {vr['auc_minus_random']:+.4g}; trials-to-target {vr['test']}: "
                         f"p = {'n/a' if p is None else format(p, '.3g')} -> {vr['verdict']}{paired}")
    for m, st in s["methods"].items():
        if st.get("asha_rung_spearman"):
            notes.append(f"{m}: rank correlation of each ASHA rung with the final value: " + "; ".join(
                f"epoch {r}: {'n/a' if c['spearman'] is None else format(c['spearman'], '.2f')} (n={c['n']})"
                for r, c in st["asha_rung_spearman"].items()))
    floors = {m: st["noise_floor"] for m, st in s["methods"].items() if st.get("noise_floor")}
    if floors:
        notes.append("noise floor (best config, other seeds): " + "; ".join(
            f"{m} {f['mean']:.4g} +- {f['std']:.2g} (n={len(f['values'])})" for m, f in floors.items()))
    notes += [f"warning: {w}" for w in s.get("noise_warnings", [])]
    pct = {m: st["process_cpu_seconds_to_target_median"] for m, st in s["methods"].items()
           if st.get("process_cpu_seconds_to_target") is not None}
    if pct and len(pct) == len(s["methods"]):  # (every arm's trials recorded them)
        notes.append("process CPU seconds to target (median; measured by the trials, robust to other work on the "
                     "machine): " + "; ".join(f"{m} {'not reached' if v is None else format(v, '.3g')}"
                                            for m, v in pct.items()))
    gtt = {m: st.get("train_gates_to_target_median") for m, st in s["methods"].items()
           if st.get("train_gates_to_target") is not None}
    if gtt and len(gtt) == len(s["methods"]):
        n = sum(st.get("train_gates_computed", 0) for st in s["methods"].values())
        notes.append("modelled training cost to target (median Boolean gates, cost.py; the gradient methods train "
                     "in fp32" + (f"; {n} trials recorded none and were computed from their configs" if n else "")
                     + "): " + "; ".join(f"{m} {'not reached' if v is None else format(v, '.3g')}"
                                         for m, v in gtt.items()))
    if s.get("initial_design") == "ax":
        notes.append("initial design: Ax's default, max(5, 2 x searched parameters) random trials per arm: " + ", ".join(
            f"{m} {st['startup_trials']}" for m, st in s["methods"].items()))
    t = s["rank_test"]
    tests = [f"target: {s['target']:.4g} ({s['target_rule']['description']}); "
             f"{t['test']}: p = {t['p_value'] if t['p_value'] is None else format(t['p_value'], '.3g')} -> {t['verdict']}"]
    pt = s["paired_test"]
    if pt["test"]:
        diff = f", mean AUC difference {pt['mean_difference']:+.4g} ({pt['arms'][0]} - {pt['arms'][1]})" \
            if "mean_difference" in pt else ""
        tests.append(f"paired by repeat (same seeds and data), AUC: {pt['test']} over {pt['n_pairs']} repeats: "
                     f"p = {format(pt['p_value'], '.3g')} -> {pt['verdict']}{diff}")
    if own and own["test"]:
        tests.append(f"each method's own target ({s['target_rule']['fraction']:g} of the way from its random configs' "
                     f"median to its best arm's median final value; its arms share it): {own['test']}: p = "
                     f"{'n/a' if own['p_value'] is None else format(own['p_value'], '.3g')} -> {own['verdict']}")
    pk = s.get("pick_test")
    if pk and pk["paired"]["test"]:
        pp = pk["paired"]
        tests.append(f"{pk['metric']} of each study's pick after {s['trials']} trials, paired by repeat: {pp['test']} "
                     f"over {pp['n_pairs']} repeats: p = {pp['p_value']:.3g} -> {pp['verdict']}")
    pairs = pairwise_table(s, markdown)
    if markdown:
        return "\n".join([head, "", *(f"- {x}" for x in notes + tests), *(["", pairs] if pairs else [])])
    return "\n".join(["", head, *notes, "", *tests, *(["", pairs] if pairs else [])])


def pairwise_table(s: dict, markdown: bool = False) -> str:
    """Every pair of methods, paired by repeat (Wilcoxon signed-rank, p Holm-adjusted over the
    pairs): the AUC and, where there is a held-out metric, each study's pick's held-out value.
    Empty with fewer than three methods (the paired test above is then that pair)."""
    from .textui import table

    auc = s.get("pairwise_auc") or []
    pick = (s.get("pick_test") or {}).get("pairwise") or []
    if not auc:
        return ""

    def cells(r):
        d = "-" if r["mean_difference"] is None else f"{r['mean_difference']:+.3g}"
        return [f"{d} ({r['wins']}/{r['n_pairs']})", "-" if r["p_holm"] is None else f"{r['p_holm']:.3g}"]

    rows = [[f"{a['arms'][0]} - {a['arms'][1]}", *cells(a), *(cells(b) if b else [])]
            for a, b in zip(auc, pick or [None] * len(auc))]
    cols = ["pair (paired by repeat)", "AUC: mean difference (wins)", "p (Holm)"]
    if pick:
        cols += [f"{s['pick_test']['metric']} of pick: mean difference (wins)", "p (Holm)"]
    return table(rows, cols, align_right=set(range(1, len(cols))), markdown=markdown)


def measured_cost_to_target(values: list[list], costs: list[list], seconds: list[list], target: float,
                            mode: str) -> list[float | None] | None:
    """Per study of an arm, a cost each trial recorded (its process CPU seconds,
    ``time/total_cpu_s``, or its modelled ``cost/train_gates``) until the target, as
    ``cost_to_target``; None for the whole arm when a trial that trained (it has
    ``time/total_s``) did not record the cost — run before it was recorded, or resumed from
    such a checkpoint: unknown, never counted as 0."""
    if any(c is None and w is not None for cs, ws in zip(costs, seconds) for c, w in zip(cs, ws)):
        return None
    return [cost_to_target(v, c, target, mode) for v, c in zip(values, costs)]


def _median_censored(xs: list[float | None]) -> float | None:
    """Median with studies that never reached the target ranked last (None if they are half or more)."""
    import statistics

    ranked = sorted(xs, key=lambda x: (x is None, x or 0.0))
    mid = ranked[(len(ranked) - 1) // 2: len(ranked) // 2 + 1]
    return None if any(x is None for x in mid) else statistics.fmean(mid)


def _json(o):
    return None if isinstance(o, float) and math.isnan(o) else str(o)
