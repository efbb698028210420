"""The pre-registered secondary analysis of the automl-cost test (README.md, "The analysis"):
final hypervolume after the budget (paired Wilcoxon, Holm over the pairs, from curves.csv), how
many trials each arm gave each method, and per study the best feasible validation accuracy and
the cheapest feasible point (the most accurate of the cheapest), and how many of the five
gradient methods have no feasible trial (from the MLflow store). Reported without a claim; the primary test
is compare's pairwise AUC table.

    .venv/bin/python docs/results/automl-cost/secondary.py runs/automlcost/out/curves.csv \
        sqlite:///runs/automlcost/mlflow.db automlcost > secondary.md
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter, defaultdict
from statistics import mean, median

from bnnsearch.compare import study_name
from bnnsearch.efficiency import pairwise_paired
from bnnsearch.sweep import MlflowCallback
from bnnsearch.tracking import Tracker

METHODS = ["latent", "filtered", "hbnn", "cyclebnn", "proxconnect", "local_binary"]


def final_values(curves: str) -> dict[str, list[float | None]]:
    """Each arm's best-so-far hypervolume at its last trial, by repeat."""
    last: dict[str, dict[int, tuple[int, float]]] = defaultdict(dict)
    with open(curves) as f:
        for row in csv.DictReader(f):
            arm, r, t = row["method"], int(row["repeat"]), int(row["trial"])
            v = float(row["best_so_far"]) if row["best_so_far"] not in ("", "nan") else None
            if v is not None and t >= last[arm].get(r, (0, 0.0))[0]:
                last[arm][r] = (t, v)
    return {arm: [by_r[r][1] if r in by_r else None for r in range(max(by_r) + 1)] for arm, by_r in last.items()}


def main(curves: str, uri: str, cmp_name: str) -> None:
    import mlflow

    finals = final_values(curves)
    arms = list(finals)
    print("## Final hypervolume after the budget (paired by repeat; Holm over the pairs)\n")
    print("| pair | mean difference | wins of the first | p | Holm p |\n|---|---|---|---|---|")
    for row in pairwise_paired(finals):
        a, b = row["arms"]
        print(f"| {a} − {b} | {row['mean_difference'] or 0.0:+.3g} | {row['wins']}/{row['n_pairs']} "
              f"| {row['p_value']:.3g} | {row['p_holm']:.3g} |")
    print("\n| arm | mean final hypervolume | min | max |\n|---|---|---|---|")
    for a in arms:
        v = [x for x in finals[a] if x is not None]
        print(f"| {a} | {mean(v):.4g} | {min(v):.4g} | {max(v):.4g} |")

    client = mlflow.MlflowClient(uri)
    tracker = Tracker.from_client(client, client.get_experiment_by_name(f"bnnsearch-compare/{cmp_name}").experiment_id)
    counts: dict[str, Counter] = {}
    shut: dict[str, list[int]] = defaultdict(list)  # per study: gradient methods with no feasible trial
    best_acc: dict[str, list] = defaultdict(list)
    cheap: dict[str, list] = defaultdict(list)
    for a in arms:
        counts[a] = Counter()
        for r in range(len(finals[a])):
            parent = tracker.find_study(study_name(cmp_name, a, r))
            runs = [x for x in (tracker.child_runs(parent.info.run_id) if parent else [])
                    if x.data.tags.get(MlflowCallback.INDEX) is not None]
            counts[a].update(x.data.tags.get("method") for x in runs)
            ok = [x for x in runs if x.data.tags.get(MlflowCallback.FEASIBLE, "1") == "1"
                  and "val/acc" in x.data.metrics and "cost/train_gates" in x.data.metrics]
            shut[a].append(len(set(METHODS[:-1]) - {x.data.tags.get("method") for x in ok}))
            if not ok:
                continue
            b = max(ok, key=lambda x: x.data.metrics["val/acc"])
            best_acc[a].append((b.data.metrics["val/acc"], b.data.metrics.get("test/acc"), b.data.tags["method"],
                                json.loads(b.data.params["arch_args.widths"])))
            c = min(ok, key=lambda x: (x.data.metrics["cost/train_gates"], -x.data.metrics["val/acc"]))  # ties: the best
            cheap[a].append((c.data.metrics["cost/train_gates"], c.data.metrics["val/acc"], c.data.tags["method"]))

    print("\n## Trials per method (all repeats)\n")
    print("| arm | " + " | ".join(METHODS) + " | total |\n|---|" + "---|" * (len(METHODS) + 1))
    for a in arms:
        print(f"| {a} | " + " | ".join(str(counts[a][m]) for m in METHODS) + f" | {sum(counts[a].values())} |")

    print("\n## Studies where gradient methods have no feasible trial (of the five: latent, filtered, hbnn, "
          "cyclebnn, proxconnect)\n")
    print("| arm | studies with at least one | with all five | per study |\n|---|---|---|---|")
    for a in arms:
        print(f"| {a} | {sum(n > 0 for n in shut[a])}/{len(shut[a])} | {sum(n == 5 for n in shut[a])}/{len(shut[a])} "
              f"| {' '.join(map(str, shut[a]))} |")

    print("\n## Per study: the best feasible validation accuracy and the cheapest feasible point\n")
    print("| arm | best val acc, mean [min, max] | its test acc, mean | methods of the best (count) "
          "| cheapest: train gates, median | its val acc, mean | methods of the cheapest |\n|---|---|---|---|---|---|---|")
    for a in arms:
        accs = [x[0] for x in best_acc[a]]
        tests = [x[1] for x in best_acc[a] if x[1] is not None]
        who = Counter(f"{m} {'x'.join(map(str, w))}" for _, _, m, w in best_acc[a])
        gates = [x[0] for x in cheap[a]]
        cwho = Counter(m for _, _, m in cheap[a])
        print(f"| {a} | {mean(accs):.4f} [{min(accs):.4f}, {max(accs):.4f}] | {mean(tests):.4f} "
              f"| {', '.join(f'{k} ({v})' for k, v in who.most_common())} | {median(gates):.3g} "
              f"| {mean(x[1] for x in cheap[a]):.4f} | {', '.join(f'{k} ({v})' for k, v in cwho.most_common())} |")


if __name__ == "__main__":
    main(*sys.argv[1:4])
