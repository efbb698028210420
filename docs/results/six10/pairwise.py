"""Every pair of the six methods' TPE arms, paired by repeat, with compare's own functions (which
print this table since da88c6d; this study ran before): the AUC of the best-so-far curve and the
test accuracy of each study's pick after the last trial; Wilcoxon signed-rank, p Holm-adjusted
over the 15 pairs. Plus the Friedman test on the picks across all six methods.

    .venv/bin/python docs/results/six10/pairwise.py docs/results/six10
"""
import csv
import json
import sys

from bnnsearch.compare import pairwise_table
from bnnsearch.efficiency import RANDOM_SUFFIX, paired_test, pairwise_paired


def main(folder: str) -> None:
    s = json.load(open(f"{folder}/summary.json"))
    methods = [m for m in s["methods"] if not m.endswith(RANDOM_SUFFIX)]
    last = {}  # (method, repeat) -> the pick's test accuracy after the last trial
    for r in csv.DictReader(open(f"{folder}/curves.csv")):
        if int(r["trial"]) == s["trials"]:
            last[r["method"], int(r["repeat"])] = float(r["incumbent_test"])
    picks = {m: [last[m, rep] for rep in range(s["repeats"])] for m in methods}
    table = {"pairwise_auc": pairwise_paired({m: s["methods"][m]["aucs"] for m in methods}, s["mode"]),
             "pick_test": {"metric": "test/acc", "pairwise": pairwise_paired(picks, s["mode"])}}
    print(pairwise_table(table, markdown=True))
    f = paired_test(picks)
    print(f"\nthe picks' test accuracy across the {len(methods)} methods: {f['test']} over {f['n_pairs']} repeats, "
          f"p = {f['p_value']:.2g}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/results/six10")
