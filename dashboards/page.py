"""The dashboard page, generated from a tracking-store snapshot."""
from __future__ import annotations

import html
import json
import math
import time

from bnnsearch.efficiency import (RANDOM_SUFFIX, gap_target, method_stats, own_gap_ttt, pad_budget, rank_test,
                                  target_value, ttt_text)

from bnnsearch.colors import method_color

from .svg import PALETTE, Frame, parallel_coordinates

CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:12px}
svg.chart{background:#fff;border:1px solid #ddd;font-size:11px}svg .plot{fill:#fafafa;stroke:#bbb}
svg .grid{stroke:#e6e6e6}svg .title{font-size:13px;font-weight:600}.note{color:#666;font-size:12px}"""


def _run_url(ui: str, exp_id: str, run_id: str) -> str:
    return f"{ui.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"


def _num(v):
    try:
        f = float(v)
        return f if math.isfinite(f) else None
    except (TypeError, ValueError):
        return None


def _colors(exp) -> dict[str, str]:
    """One colour per method, the same on every chart and in the comparison's PNGs."""
    names = ({t["tags"].get("method", "?") for t in exp["trials"]}
             | {m for c in exp["comparisons"] for m in json.loads(c["tags"].get("study_runs", "{}"))})
    return {m: method_color(m) for m in names}


def _efficiency_section(exp, comp, client=None) -> str:
    study_runs = json.loads(comp["tags"].get("study_runs", "{}"))
    params = comp["params"]
    trials = int(params.get("trials", 0) or 0)
    delta = float(params.get("target_delta", 0.5))
    studies = {s["run_id"]: s for s in exp["studies"]}
    multi = any("objectives" in studies[p]["params"] for pids in study_runs.values() for p in pids if p in studies)
    if multi:  # AutoML studies: the hypervolume after each trial
        from bnnsearch.tracking import metric_history

        for pids in study_runs.values():
            for p in pids:
                if p in studies:
                    studies[p]["trial_values"] = [v for _, v in metric_history(client, p, "hypervolume")]
    per_method = {m: [studies[p]["trial_values"] for p in pids if p in studies] for m, pids in study_runs.items()}
    per_method = {m: [pad_budget(v, trials) for v in vs] for m, vs in per_method.items() if vs}
    if not per_method:
        return "<p class=note>no studies of this comparison in the store</p>"
    first = studies[next(iter(study_runs.values()))[0]]
    metric, mode = first["params"].get("metric", "val/acc"), first["params"].get("mode", "max")
    if multi:
        metric, mode = "hypervolume", "max"
    if params.get("target_gap"):  # the comparison's own rule (compare --target-gap)
        target, info = gap_target(per_method, mode, float(params["target_gap"]), int(params.get("startup_trials", 1)))
        rule = (f"{float(params['target_gap']):g} of the way from a random config's median to the best arm's "
                f"median final value ({info['best_arm']})")
    else:
        target = target_value([v for vs in per_method.values() for s in vs for v in s], mode, delta, metric)
        rule = f"best of all studies minus {delta} points"
    stats = {m: method_stats(m, vs, target, mode) for m, vs in per_method.items()}
    # As in compare: the rank test is between the methods; a method's random-search arm
    # (compare --random-arm: "<method>@random" beside "<method>") is apart from it.
    test = rank_test({m: s.ttt for m, s in stats.items()
                      if not (m.endswith(RANDOM_SUFFIX) and m[: -len(RANDOM_SUFFIX)] in stats)}, trials)
    all_y = [y for s in stats.values() for ys in (s.mean, s.low, s.high) for y in ys  # bands never clipped
             if y is not None and not math.isnan(y)]
    fr = Frame(list(range(1, trials + 1)), all_y + [target], title=f"best-so-far {metric}: mean and 95% band",
               xlabel="trial", ylabel=metric, legend=True)
    from bnnsearch.colors import arm_styles

    styles = arm_styles(stats)  # a random-search arm: the method's colour, dashed; sampler arms: see arm_styles
    for m, st in stats.items():
        xs = list(range(1, st.budget + 1))
        color, dashed = styles[m]
        fr.band(xs, st.low, st.high, color)
        fr.line(xs, st.mean, color, dash="7,3" if dashed else "")
    fr.line([1, trials], [target, target], "#000", width=1, dash="4,3")
    fr.legend([(m, styles[m][0], "7,3") if styles[m][1] else (m, styles[m][0]) for m in stats]
              + [("target", "#000", "4,3")])
    # as compare: with a gap target, each method against its own plateau (its arms share it)
    own = (own_gap_ttt(per_method, mode, float(params["target_gap"]), int(params.get("startup_trials", 1)))
           if params.get("target_gap") else None)

    def own_cell(m):
        o = (own or {}).get(m)
        return "" if own is None else (f"<td>{html.escape(ttt_text(o['median'], o['q1'], o['q3'], stats[m].budget, o.get('bounds')))} ({o['reached']})</td>"
                                       if o else "<td>-</td>")

    rows = "".join(
        f"<tr><td>{html.escape(m)}</td><td>{st.repeats}x{st.budget}</td><td>{st.best_value:.4g}</td>"
        f"<td>{st.auc_mean:.4g}</td><td>{html.escape(ttt_text(st.ttt_median, st.ttt_q1, st.ttt_q3, st.budget, st.ttt_bounds))}</td>"
        f"<td>{st.reached}/{st.repeats}</td>{own_cell(m)}</tr>" for m, st in stats.items())
    p = test["p_value"]
    own_head = "" if own is None else "<th>to own target median [IQR] (reached)</th>"
    return (f"<div class=charts>{fr.svg()}</div><table><tr><th>method</th><th>studies</th><th>best</th><th>AUC</th>"
            f"<th>trials-to-target median [IQR]</th><th>reached</th>{own_head}</tr>{rows}</table>"
            f"<p>target {target:.4g} ({html.escape(rule)}); {test['test']}: "
            f"p = {'n/a' if p is None else format(p, '.3g')} &rarr; <b>{test['verdict']}</b></p>")


def _importance(trials, mode):
    """fANOVA importance (Optuna) over the trials' numeric/categorical hyperparameters."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    keys = sorted({k for t in trials for k in t["params"] if k.startswith("hparams.")})
    dists = {}
    for k in keys:
        vals = [t["params"].get(k) for t in trials]
        nums = [_num(v) for v in vals]
        if all(n is not None for n in nums) and len(set(nums)) > 1:
            lo, hi = min(nums), max(nums)
            dists[k] = optuna.distributions.FloatDistribution(lo, hi, log=lo > 0 and hi / lo > 100)
        elif len(set(vals)) > 1:
            dists[k] = optuna.distributions.CategoricalDistribution(sorted(set(map(str, vals))))
    if not dists:
        return {}
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for t in trials:
        params = {k: (_num(t["params"][k]) if isinstance(d, optuna.distributions.FloatDistribution)
                      else str(t["params"][k])) for k, d in dists.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=t["metrics"]["objective"]))
    if len(study.trials) < 4:
        return {}
    return optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))


def _method_section(exp, method, trials, ui, client) -> str:
    done = [t for t in trials if t["tags"].get("bnnsearch.status") == "complete" and "objective" in t["metrics"]]
    if not done:
        return "<p class=note>no complete trial yet</p>"
    studies = [s for s in exp["studies"] if s["tags"].get("method") == method]
    mode = studies[0]["params"].get("mode", "max") if studies else "max"
    sign = 1 if mode == "max" else -1
    parts = []
    try:
        imp = _importance(done, mode)
    except Exception as e:  # noqa: BLE001 - importance is best effort on few trials
        imp = {}
        parts.append(f"<p class=note>hyperparameter importance not available: {html.escape(str(e))}</p>")
    if imp:
        parts.append("<table><tr><th>hyperparameter</th><th>fANOVA importance</th></tr>" + "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in imp.items()) + "</table>")
    charts = []
    keys = sorted({k for t in done for k in t["params"] if k.startswith("hparams.")},
                  key=lambda k: -imp.get(k, 0.0))
    for k in keys[:6]:
        vals = [t["params"].get(k) for t in done]
        nums = [_num(v) for v in vals]
        if len({str(v) for v in vals}) < 2:
            continue
        if all(n is not None for n in nums):
            logx = min(nums) > 0 and max(nums) / min(nums) > 100
            fr = Frame(nums, [t["metrics"]["objective"] for t in done], logx=logx, title=f"objective vs {k}",
                       xlabel=k, ylabel="objective")
            for t, x in zip(done, nums):
                fr.point(x, t["metrics"]["objective"], PALETTE[0], _run_url(ui, exp["id"], t["run_id"]),
                         f"{t['name']}: {t['metrics']['objective']:.4f}")
        else:
            cats = sorted({str(v) for v in vals})
            fr = Frame([], [t["metrics"]["objective"] for t in done], title=f"objective vs {k}", xlabel=k,
                       ylabel="objective", xcats=cats)
            for i, (t, v) in enumerate(zip(done, vals)):  # jitter within the category's slot
                fr.point(cats.index(str(v)) + 0.08 * ((i % 5) - 2), t["metrics"]["objective"], PALETTE[1],
                         _run_url(ui, exp["id"], t["run_id"]), f"{t['name']}: {v}")
        charts.append(fr.svg())
    charts.insert(0, _parallel(done, keys[:8], exp, ui, method))
    best = max(done, key=lambda t: sign * t["metrics"]["objective"])
    from bnnsearch.tracking import metric_history

    flips = metric_history(client, best["run_id"], "bin/flip_ratio")
    if flips:
        fr = Frame([s for s, _ in flips], [v for _, v in flips], title=f"best trial {best['name']}: flip ratio per step",
                   xlabel="epoch", ylabel="bin/flip_ratio")
        fr.line([s for s, _ in flips], [v for _, v in flips], PALETTE[2])
        charts.append(fr.svg())
    for key in sorted(k for k in best["metrics"] if k.startswith("sched/"))[:2]:
        h = metric_history(client, best["run_id"], key)
        fr = Frame([s for s, _ in h], [v for _, v in h], title=f"best trial: {key}", xlabel="epoch", ylabel=key)
        fr.line([s for s, _ in h], [v for _, v in h], PALETTE[3])
        charts.append(fr.svg())
    return "".join(parts) + "<div class=charts>" + "".join(charts) + "</div>"


def _parallel(done, keys, exp, ui, method) -> str:
    """Parallel coordinates: each axis a hyperparameter scaled to [0, 1] (log-scaled when its
    values span more than two decades; categories evenly spaced)."""
    axes, cols, ticks = [], [], []
    for k in keys:
        vals = [t["params"].get(k) for t in done]
        nums = [_num(v) for v in vals]
        if len({str(v) for v in vals}) < 2:
            continue
        if all(n is not None for n in nums):
            log = min(nums) > 0 and max(nums) / min(nums) > 100
            tx = [math.log10(n) for n in nums] if log else nums
            lo, hi = min(tx), max(tx)
            cols.append([(v - lo) / (hi - lo) for v in tx])
            ticks.append([(f, f"{(10 ** (lo + f * (hi - lo)) if log else lo + f * (hi - lo)):.3g}")
                          for f in (0.0, 0.5, 1.0)])
        else:
            cats = sorted({str(v) for v in vals})
            cols.append([cats.index(str(v)) / max(len(cats) - 1, 1) for v in vals])
            ticks.append([(i / max(len(cats) - 1, 1), c) for i, c in enumerate(cats)])
        axes.append(k.removeprefix("hparams."))
    rows = [([c[i] for c in cols], t["metrics"]["objective"], _run_url(ui, exp["id"], t["run_id"]),
             f"{t['name']}: {t['metrics']['objective']:.4f}") for i, t in enumerate(done)]
    if len(axes) < 2:  # one axis has no lines between axes: the scatter against it says it all
        return ""
    return parallel_coordinates(axes, rows, f"{method}: parallel coordinates of the trials", ticks)


def _pareto(points):
    """Points not dominated (higher objective, lower cost)."""
    front = []
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or p[1] > front[-1][1]:
            front.append(p)
    return front


def _cost_section(exp, ui) -> str:
    done = [t for t in exp["trials"] if t["tags"].get("bnnsearch.status") == "complete"
            and "objective" in t["metrics"] and "cost/ops" in t["metrics"]]
    if not done:
        return "<p class=note>no complete trial with cost metrics</p>"
    colors = _colors(exp)
    methods = sorted({t["tags"].get("method", "?") for t in done})
    charts, notes = [], []
    for key, label in (("cost/ops", "OPs per sample (BOPs/64 + FLOPs)"), ("cost/mem_bits", "memory (bits)"),
                       ("cost/train_gates", "modelled training cost (Boolean gates)"),
                       ("time/total_cpu_s", "measured training CPU seconds")):
        pts = [(t["metrics"][key], t["metrics"]["objective"], t) for t in done if key in t["metrics"]]
        if not pts:
            continue
        if len({p[0] for p in pts}) < 2:  # one network size: a column of points is no trade-off
            notes.append(f"every trial has the same {key} ({pts[0][0]:.4g}): the architecture was not searched, so "
                         f"there is no accuracy-vs-{key.split('/')[1]} trade-off to draw")
            continue
        fr = Frame([p[0] for p in pts], [p[1] for p in pts], logx=min(p[0] for p in pts) > 0,
                   title=f"objective vs {label}", xlabel=key, ylabel="objective", legend=True)
        for x, y, t in pts:
            fr.point(x, y, colors[t["tags"].get("method", "?")],
                     _run_url(ui, exp["id"], t["run_id"]), f"{t['tags'].get('method')} {t['name']}: {y:.4f}")
        front = _pareto([(x, y) for x, y, _ in pts])
        fr.line([x for x, _ in front], [y for _, y in front], "#000", width=1.2, dash="3,2")
        fr.legend([(m, colors[m]) for m in methods] + [("Pareto front", "#000", "3,2")])
        charts.append(fr.svg())
    return ("".join(f"<p class=note>{html.escape(n)}</p>" for n in notes)
            + "<div class=charts>" + "".join(charts) + "</div>")


def _automl_section(exp, study, ui, client) -> str:
    """An AutoML study: its front in the first two objectives (every trial drawn, infeasible
    ones hollow grey; the front in the method's colour, joined), the hypervolume of the
    feasible trials against trial index, and the front as a table with links."""
    from bnnsearch.automl import pareto_front
    from bnnsearch.tracking import STUDY_TAG, metric_history

    objs = [tuple(o) for o in json.loads(study["params"]["objectives"])]
    name = study["tags"].get(STUDY_TAG)
    pts = []
    for t in exp["trials"]:
        if t["tags"].get(STUDY_TAG) != name or "bnnsearch.objectives" not in t["tags"]:
            continue
        pts.append({"objectives": json.loads(t["tags"]["bnnsearch.objectives"]), "trial": t,
                    "status": t["tags"].get("bnnsearch.status"), "feasible": t["tags"].get("bnnsearch.feasible", "1") == "1"})
    if not pts:
        return "<p class=note>no finished trial yet</p>"
    colors = _colors(exp)
    front = pareto_front(pts, objs)
    (m0, _), (m1, _) = objs[0], objs[1]
    xs, ys = [p["objectives"][1] for p in pts], [p["objectives"][0] for p in pts]
    fr = Frame(xs, ys, logx=min(xs) > 0 and max(xs) / min(xs) > 100, title=f"{name}: Pareto front",
               xlabel=m1, ylabel=m0, legend=True)
    for p in pts:
        t = p["trial"]
        ok = p["feasible"] and p["status"] == "complete"
        fr.point(p["objectives"][1], p["objectives"][0], colors.get(t["tags"].get("method"), "#888") if ok else "#bbb",
                 _run_url(ui, exp["id"], t["run_id"]),
                 f"{t['tags'].get('method')} {t['name']}: {m0} {p['objectives'][0]:.4g}, {m1} {p['objectives'][1]:.4g}"
                 + ("" if ok else " (infeasible)" if not p["feasible"] else f" ({p['status']})"))
    line = sorted(front, key=lambda p: p["objectives"][1])
    fr.line([p["objectives"][1] for p in line], [p["objectives"][0] for p in line], "#000", width=1.2, dash="3,2")
    methods = sorted({p["trial"]["tags"].get("method", "?") for p in pts})
    fr.legend([(m, colors.get(m, "#888")) for m in methods] + [("front", "#000", "3,2"), ("infeasible / not complete", "#bbb")])
    charts = [fr.svg()]
    hv = metric_history(client, study["run_id"], "hypervolume")
    if hv:
        h = Frame([k for k, _ in hv], [v for _, v in hv], title=f"{name}: hypervolume vs trial", xlabel="trial",
                  ylabel="hypervolume")
        h.line([k for k, _ in hv], [v for _, v in hv], PALETTE[0])
        charts.append(h.svg())
    rows = "".join(f"<tr><td>{i + 1}</td><td>{html.escape(p['trial']['tags'].get('method', '?'))}</td>"
                   + "".join(f"<td>{v:.4g}</td>" for v in p["objectives"])
                   + f"<td><a href='{_run_url(ui, exp['id'], p['trial']['run_id'])}'>{html.escape(p['trial']['name'])}</a></td></tr>"
                   for i, p in enumerate(front))
    head = "".join(f"<th>{html.escape(m)} ({d})</th>" for m, d in objs)
    return (f"<div class=charts>{''.join(charts)}</div><table><tr><th>rank</th><th>method</th>{head}<th>run</th></tr>"
            f"{rows}</table>")


def build_html(uri: str | None = None, ui: str = "http://127.0.0.1:5000", refresh_s: int = 0) -> str:
    """The whole dashboard as one self-contained HTML document."""
    from bnnsearch.tracking import snapshot

    snap = snapshot(uri)
    client = snap.pop("client")
    body = [f"<h1>bnnsearch dashboard</h1><p class=note>tracking store {html.escape(snap['uri'])}; "
            f"generated {time.strftime('%Y-%m-%d %H:%M:%S')}; points link to their MLflow runs at {html.escape(ui)}</p>"]
    if not snap["experiments"]:
        body.append("<p>No bnnsearch studies in this store yet: run <code>bnnsearch sweep</code> or "
                    "<code>bnnsearch compare</code>.</p>")
    for exp in snap["experiments"]:
        body.append(f"<h2>{html.escape(exp['name'])}</h2>")
        unfinished = sum(st["status"] != "FINISHED" for st in exp["studies"])
        n_st = len(exp["studies"])
        body.append(f"<p class=note>{n_st} stud{'y' if n_st == 1 else 'ies'}, {len(exp['trials'])} trials"
                    + (f"; {unfinished} stud{'y' if unfinished == 1 else 'ies'} interrupted or running (their "
                       "complete trials are shown; efficiency "
                       "curves come only from finished comparisons)" if unfinished else "") + "</p>")
        for st in exp["studies"]:
            if "objectives" in st["params"]:
                body.append(f"<h3>AutoML front: {html.escape(st['name'] or '')}</h3>" + _automl_section(exp, st, ui, client))
        for comp in exp["comparisons"]:
            body.append(f"<h3>Efficiency: {html.escape(comp['name'] or '')}</h3>" + _efficiency_section(exp, comp, client))
        body.append("<h3>Accuracy vs cost (all trials; dashed: Pareto front)</h3>" + _cost_section(exp, ui))
        for method in sorted({t["tags"].get("method", "?") for t in exp["trials"]}):
            trials = [t for t in exp["trials"] if t["tags"].get("method") == method]
            body.append(f"<h3>{html.escape(method)}: importance, objective vs hyperparameters, best trial</h3>"
                        + _method_section(exp, method, trials, ui, client))
    meta = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (f"<!doctype html><html><head><meta charset=utf-8>{meta}<title>bnnsearch dashboard</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
