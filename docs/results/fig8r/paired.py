"""The paired tests of the write-up, from a two-arm compare output folder's curves.csv:
the pick's test accuracy (incumbent after the last trial) and best-so-far validation accuracy
at fixed trial indices, first arm minus second, Wilcoxon signed-rank over the repeats; and per
arm the median validation accuracy of its random startup trials (the first n, n the fewer of
the two arms' startup trials, so that both arms' medians count the same trials) and its
plateau (the median final best-so-far): the "random config median -> plateau" column of the
tables.

    python docs/results/fig8r/paired.py docs/results/fig8r/base
"""
import csv
import json
import statistics
import sys
from collections import defaultdict

from scipy.stats import wilcoxon


def main(folder: str) -> None:
    s = json.load(open(f"{folder}/summary.json"))
    T = s["trials"]
    arms = list(s["methods"])[:2]
    fin, bsf = defaultdict(dict), defaultdict(lambda: defaultdict(dict))
    startup = defaultdict(list)
    n0 = min(s["methods"][m]["startup_trials"] for m in arms)
    for r in csv.DictReader(open(f"{folder}/curves.csv")):
        m, rep, t = r["method"], int(r["repeat"]), int(r["trial"])
        bsf[m][rep][t] = float(r["best_so_far"])
        if t <= n0:
            startup[m].append(float(r["value"]))
        if t == T:
            fin[m][rep] = float(r["incumbent_test"])
    for m in arms:
        plateau = statistics.median(bsf[m][rep][T] for rep in bsf[m])
        print(f"{m}: first {n0} (random) trials' median {100 * statistics.median(startup[m]):.1f} % -> "
              f"plateau (median final best-so-far) {100 * plateau:.1f} %")
    a, b = arms
    reps = sorted(set(fin[a]) & set(fin[b]))
    d = [fin[a][r] - fin[b][r] for r in reps]
    print(f"test acc of the pick, {a} - {b}: {100 * sum(d) / len(d):+.2f} points, {a} better in "
          f"{sum(x > 0 for x in d)}/{len(d)} (ties {sum(x == 0 for x in d)}), Wilcoxon p = {wilcoxon(d).pvalue:.3g}")
    for t in sorted({5, 10, 15, T}):
        d = [bsf[a][r][t] - bsf[b][r][t] for r in reps]
        p = wilcoxon(d).pvalue if any(d) else 1.0
        print(f"best-so-far val acc after {t} trials, {a} - {b}: {100 * sum(d) / len(d):+.2f} points, "
              f"{a} ahead in {sum(x > 0 for x in d)}/{len(d)}, Wilcoxon p = {p:.3g}")


if __name__ == "__main__":
    main(sys.argv[1])
