"""The figures of a comparison (``bnnsearch compare``), written next to its summary:
``efficiency.png`` (best-so-far against trial: every study thin, each arm's mean with its band,
dotted the mean held-out value of each study's pick; all trials, and zoomed after the random start),
``trials_to_target.png`` (a box per arm) and ``efficiency_cost.png`` (best-so-far against the
modelled training cost spent). Colours are the dashboard's (``colors.arm_styles``)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from .efficiency import ttt_value


def efficiency_plots(stats, per_method, target, summary, out: Path, gates: dict | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .efficiency import best_so_far

    mode, metric = summary["mode"], summary["metric"]
    from .colors import arm_styles

    styles = arm_styles(stats)  # the dashboard's colours
    # Two panels: every value (the spread of early trials), and the top after the random startup
    # trials, where the arms' differences are (a few points of accuracy, invisible at full range).
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    k = min(max(summary.get("startup_trials") or 1, 1), max(st.budget for st in stats.values())) - 1
    zoom = []
    for m, st in stats.items():
        inc = summary["methods"][m]["incumbent_test"]
        zoom += [st.mean[min(k, st.budget - 1)], *(inc["mean"][min(k, st.budget - 1):] if inc["metric"] else [])]
    seen = [v for studies in per_method.values() for s in studies for v in best_so_far(s, mode) if not math.isnan(v)]
    for ax, part in zip(axes, ("all trials", f"from trial {k + 1} (zoomed)")):
        for m, st in stats.items():
            c, dashed = styles[m]
            xs = list(range(1, st.budget + 1))
            for s in per_method[m]:
                ax.plot(xs, best_so_far(s, mode), color=c, alpha=0.15, lw=0.8)
            ax.plot(xs, st.mean, color=c, lw=2, ls="--" if dashed else "-",
                    label=f"{m} (median trials-to-target {ttt_value(st.ttt_median, st.budget, st.ttt_bounds[0])})")
            ax.fill_between(xs, st.low, st.high, color=c, alpha=0.2)
            inc = summary["methods"][m]["incumbent_test"]
            if inc["metric"]:  # what the study delivers: the held-out value of its current pick
                ax.plot(xs, inc["mean"], color=c, lw=1.2, ls=":")
        ax.axhline(target, color="k", ls="--", lw=1, label=f"target ({target:.4g})")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("trial")
        ax.set_title(part, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"best-so-far {metric} (mean, band, studies)")
    finite = [v for v in zoom + seen if v is not None and math.isfinite(v)]
    if seen:  # show the data's range; wide t-bands of few repeats are clipped in display only
        lo, hi = min(seen), max(seen)
        pad = 0.1 * (hi - lo or 1.0)
        axes[0].set_ylim(lo - pad, hi + pad)
        zlo = [v for v in zoom if v is not None and math.isfinite(v)]
        lo, hi = (min(zlo), max(finite)) if mode == "max" and zlo else (min(finite), max(zlo)) if zlo else (lo, hi)
        pad = 0.1 * (hi - lo or 1.0)
        axes[1].set_ylim(lo - pad, hi + pad)
        axes[1].set_xlim(k + 0.5, max(st.budget for st in stats.values()) + 0.5)
    handles, labels = axes[0].get_legend_handles_labels()
    if any(summary["methods"][m]["incumbent_test"]["metric"] for m in stats):
        from matplotlib.lines import Line2D

        test_key = next(summary["methods"][m]["incumbent_test"]["metric"] for m in stats
                        if summary["methods"][m]["incumbent_test"]["metric"])
        handles.append(Line2D([], [], color="grey", ls=":", lw=1.2))
        labels.append(f"dotted: {test_key} of the pick (mean)")
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"{summary['repeats']} repeats x {summary['trials']} trials, {summary['sampler']}; trials-to-target "
                 f"{summary['rank_test']['test'] or 'test'}: {summary['rank_test']['verdict']}"
                 + (f" (p={summary['rank_test']['p_value']:.3g})" if summary["rank_test"]["p_value"] is not None else ""),
                 fontsize=11)
    p1 = out / "efficiency.png"
    fig.tight_layout()
    fig.savefig(p1, dpi=120, bbox_inches="tight")
    plt.close(fig)
    names = list(stats)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(names) + 2), 4.5))
    data = [[t if t is not None else st.budget + 1 for t in st.ttt] for st in stats.values()]
    ax.boxplot(data, tick_labels=names)
    if len(names) > 4:  # long arm names ("proxconnect@random") overlap when horizontal
        ax.tick_params(axis="x", labelrotation=35)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
    for i, (m, d) in enumerate(zip(names, data), 1):
        ax.scatter([i] * len(d), d, alpha=0.5, s=12, color=styles[m][0])
    budget = max(st.budget for st in stats.values())
    ax.axhline(budget + 1, color="grey", ls=":", lw=1, label="did not reach the target")
    ax.set_ylabel("trials to target")
    ax.legend(fontsize=8)
    p2 = out / "trials_to_target.png"
    fig.tight_layout()
    fig.savefig(p2, dpi=120)
    plt.close(fig)
    p3 = cost_plot(per_method, gates or {}, target, summary, out / "efficiency_cost.png", styles)
    return [p1, p2] + ([p3] if p3 else [])


def cost_plot(per_method, gates, target, summary, path: Path, styles) -> Path | None:
    """Efficiency against the modelled training cost spent: best-so-far against the cumulative
    ``cost/train_gates`` of a study's trials (log axis; every study thin), and per arm the mean
    best-so-far after trial t drawn at the mean cumulative cost of trial t. None when some arm's
    cost is unknown (a trial that trained without it)."""
    import matplotlib.pyplot as plt

    from .efficiency import best_so_far

    if not gates or any(summary["methods"][m].get("train_gates_to_target") is None for m in per_method):
        return None
    mode = summary["mode"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for m, studies in per_method.items():
        c, dashed = styles[m]
        xs, ys = [], []
        for vals, g in zip(studies, gates[m]):
            cum, total = [], 0.0
            for v in g:
                total += v or 0.0
                cum.append(total)
            bsf = best_so_far(vals, mode)
            ax.plot(cum, bsf, color=c, alpha=0.15, lw=0.8)
            xs.append(cum)
            ys.append(bsf)
        mx = [statistics.fmean(col) for col in zip(*xs)]
        my = [statistics.fmean(f) if (f := [v for v in col if not math.isnan(v)]) else math.nan for col in zip(*ys)]
        ax.plot(mx, my, color=c, lw=2, ls="--" if dashed else "-", label=m)
    ax.axhline(target, color="k", ls="--", lw=1, label=f"target ({target:.4g})")
    ax.set_xscale("log")
    ax.set_xlabel("modelled training cost spent (cumulative cost/train_gates, Boolean gates)")
    ax.set_ylabel(f"best-so-far {summary['metric']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set_title("efficiency against modelled training cost (mean at each trial's mean cost; studies thin)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
