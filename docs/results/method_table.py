"""The per-method table of a six-method comparison's write-up (docs/results/six10, six1d), read
from the comparison's ``summary.json`` so that no number in it is copied by hand: one row per
method with its TPE arm and, where there is one, its random-search arm (``<method>@random``).

    .venv/bin/python docs/results/method_table.py docs/results/six10

Columns: tuned hyperparameters (active ones only: a range where conditions apply); best
validation value of the method's TPE studies; mean test value of each study's pick after the last
trial; the best configuration re-trained with other seeds (mean ± sd, the noise floor); a random
configuration's median value and the method's own plateau (its own target's rule); median
trials to the method's own target, TPE / random, with how many studies reached it; AUC of the
best-so-far curve with its 95 % bootstrap interval (TPE) and random search's AUC; CPU seconds
per study, TPE / random; where recorded, the median modelled training cost to the common target
(Boolean gates, ``cost/train_gates``; "-" where no study reached it).
"""
from __future__ import annotations

import json
import sys

RANDOM = "@random"


def pct(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f} %"


def hps(st: dict) -> str:
    h = st.get("hyperparameters") or {}
    lo, hi = h.get("active_min"), h.get("active_max")
    return "-" if lo is None else str(lo) if lo == hi else f"{lo}–{hi}"


def ttt(st: dict | None) -> tuple[str, str]:
    o = (st or {}).get("own_target")
    if not o:
        return "-", "-"
    m = o["median"]
    return (f"{m:g}", str(o["reached"]))


def gates(st: dict) -> str:
    v = st.get("train_gates_to_target_median")
    return "-" if v is None else f"{v:.2e}"


def rows(s: dict) -> list[list[str]]:
    out = []
    methods = s["methods"]
    for m, st in methods.items():
        if m.endswith(RANDOM):
            continue
        rnd = methods.get(m + RANDOM)
        nf = st.get("noise_floor")
        own = st.get("own_target") or {}
        (t_tpe, r_tpe), (t_rnd, r_rnd) = ttt(st), ttt(rnd)
        per_study = lambda a: "-" if a is None else f"{a['cpu_seconds'] / a['repeats']:.0f}"  # noqa: E731
        out.append([
            m, hps(st), pct(st["best_value"]), pct((st.get("incumbent_test") or {}).get("final_mean")),
            "-" if not nf else f"{100 * nf['mean']:.1f} ± {100 * nf['std']:.1f} %",
            "-" if not own else f"{100 * own['random_median']:.1f} → {100 * own['plateau']:.1f} %",
            f"{t_tpe} / {t_rnd} ({r_tpe} / {r_rnd})",
            f"{st['auc_mean']:.3f} [{st['auc_ci'][0]:.3f}, {st['auc_ci'][1]:.3f}]",
            "-" if rnd is None else f"{rnd['auc_mean']:.3f}",
            f"{per_study(st)} / {per_study(rnd)}",
            gates(st),
        ])
    return out


COLUMNS = ["method", "tuned HPs", "best val acc", "test acc of the pick (mean)", "best config re-trained",
           "random config → own plateau (median val acc)", "trials to own target, TPE / random (studies that reached it)",
           "AUC [95 % bootstrap], TPE", "AUC, random", "CPU s per study, TPE / random",
           "modelled training gates to the common target (median, TPE)"]


def main(folder: str) -> None:
    s = json.load(open(f"{folder}/summary.json"))
    table = rows(s)
    keep = [i for i in range(len(COLUMNS)) if any(r[i] != "-" for r in table) or i == 0]
    print("| " + " | ".join(COLUMNS[i] for i in keep) + " |")
    print("|" + "---|" * len(keep))
    for r in table:
        print("| " + " | ".join(r[i] for i in keep) + " |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/results/six1d")
