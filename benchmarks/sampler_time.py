"""Time a sampler takes to suggest the next trial, against the number of finished trials.

    python benchmarks/sampler_time.py [--space search_spaces/latent.yaml] [--at 10 50 100]

For each sampler (tpe, gp, botorch) a study is filled with N finished trials (random points with
a smooth synthetic objective; the suggestion cost does not depend on where values come from),
then the median wall time of 3 suggestions is printed.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="search_spaces/latent.yaml")
    ap.add_argument("--at", type=int, nargs="+", default=[10, 50, 100])
    args = ap.parse_args()
    import optuna

    from bnnsearch.spaces import load_space
    from bnnsearch.searcher import make_sampler

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = load_space(args.space)
    dists = space.distributions()
    print(f"space {args.space}: {len(dists)} parameters; median of 3 suggestions (seconds)")
    print(f"{'sampler':<8}" + "".join(f"{f'n={n}':>10}" for n in args.at))
    for name in ("tpe", "gp", "botorch"):
        row = []
        for n in args.at:
            study = optuna.create_study(direction="maximize", sampler=make_sampler(name, 0, 5))
            rnd = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
            for _ in range(n):
                t = rnd.ask(dists)
                v = sum(math.sin(3 * i + (x if isinstance(x, (int, float)) else len(str(x))))
                        for i, x in enumerate(t.params.values()))
                study.add_trial(optuna.trial.create_trial(params=t.params, distributions=dists, value=v))
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                trial = study.ask(dists)
                times.append(time.perf_counter() - t0)
                study.tell(trial, 0.0)
            row.append(statistics.median(times))
        print(f"{name:<8}" + "".join(f"{s:10.3f}" for s in row), flush=True)


if __name__ == "__main__":
    main()
